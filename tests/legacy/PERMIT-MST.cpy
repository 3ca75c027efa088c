      * PERMIT-MST: ONE PERMIT ON THE IMPORTER'S INDEXED MASTER FILE.
       01  PERMIT-MST.
           05  PM-PERMIT-NO        PIC 9(8).
           05  PM-STATUS           PIC X(10).
           05  PM-FEE              PIC S9(7)V99 COMP-3.
           05  PM-UNITS            PIC S9(4) COMP.
           05  PM-LAST-SEQ         PIC 9(9).
