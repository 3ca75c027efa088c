      *----------------------------------------------------------------*
      * NUMBERS: ONE ITEM OF EACH NUMERIC KIND HMS-SYNC WRITES. THE     *
      * DIFFERENTIAL TEST READS THIS COPYBOOK WITH HMS-SYNC'S READER    *
      * AND COMPARES ITS BYTES WITH WHAT GNUCOBOL WROTE FOR EACH VALUE. *
      *----------------------------------------------------------------*
       01  NUM-ITEMS.
           05  N-ZONED          PIC S9(5)V99.
           05  N-ZONED-U        PIC 9(7).
           05  N-ZONED-LS       PIC S9(5)V99 SIGN LEADING SEPARATE.
           05  N-ZONED-TS       PIC S9(5)V99 SIGN TRAILING SEPARATE.
           05  N-ZONED-L        PIC S9(5)V99 SIGN LEADING.
           05  N-ZONED-INT      PIC S9(9).
           05  N-PACKED         PIC S9(5)V99 COMP-3.
           05  N-PACKED-EVEN    PIC S9(6)V99 PACKED-DECIMAL.
           05  N-PACKED-U       PIC 9(7) COMP-3.
           05  N-PACKED-BIG     PIC S9(18) COMP-3.
           05  N-BIN-2          PIC S9(4) COMP.
           05  N-BIN-4          PIC S9(7)V99 BINARY.
           05  N-BIN-8          PIC S9(18) COMP-4.
           05  N-BIN-U          PIC 9(8) COMP.
