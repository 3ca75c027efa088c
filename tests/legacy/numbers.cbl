      * NUMBERS: MOVES EACH VALUE OF THE TABLE BELOW (THE SAME
      * TABLE AS TESTS/LEGACY/VALUES.TXT) INTO EVERY ITEM OF
      * NUMBERS.CPY AND WRITES ONE RECORD A VALUE: ONE FLAG A ITEM
      * ('K' WHEN THE ITEM HOLDS THE VALUE EXACTLY, 'T' WHEN COBOL
      * TRUNCATED IT), THEN THE ITEMS' BYTES. THE DIFFERENTIAL TEST
      * (TESTS/IT/COBOL.RS) COMPARES HMS-SYNC'S BYTES WITH THESE.
       IDENTIFICATION DIVISION.
       PROGRAM-ID. NUMBERS.
       ENVIRONMENT DIVISION.
       INPUT-OUTPUT SECTION.
       FILE-CONTROL.
           SELECT OUT-FILE ASSIGN TO 'numbers.out'
               ORGANIZATION IS SEQUENTIAL.
       DATA DIVISION.
       FILE SECTION.
       FD  OUT-FILE.
       01  OUT-REC.
           05  OUT-FLAGS        PIC X(14).
           05  OUT-ITEMS        PIC X(90).
       WORKING-STORAGE SECTION.
       01  WS-V                 PIC S9(20)V9(8).
       01  WS-FLAGS.
           05  WS-FLAG          PIC X OCCURS 14 TIMES.
       COPY 'NUMBERS.cpy'.
       PROCEDURE DIVISION.
       MAIN-PARA.
           OPEN OUTPUT OUT-FILE
           MOVE 0 TO WS-V
           PERFORM ONE-VALUE
           MOVE 1 TO WS-V
           PERFORM ONE-VALUE
           MOVE -1 TO WS-V
           PERFORM ONE-VALUE
           MOVE 12.34 TO WS-V
           PERFORM ONE-VALUE
           MOVE -12.34 TO WS-V
           PERFORM ONE-VALUE
           MOVE 99999.99 TO WS-V
           PERFORM ONE-VALUE
           MOVE -99999.99 TO WS-V
           PERFORM ONE-VALUE
           MOVE 100000 TO WS-V
           PERFORM ONE-VALUE
           MOVE 0.005 TO WS-V
           PERFORM ONE-VALUE
           MOVE -0.01 TO WS-V
           PERFORM ONE-VALUE
           MOVE 1234567 TO WS-V
           PERFORM ONE-VALUE
           MOVE -1234567 TO WS-V
           PERFORM ONE-VALUE
           MOVE 9999 TO WS-V
           PERFORM ONE-VALUE
           MOVE -9999 TO WS-V
           PERFORM ONE-VALUE
           MOVE 10000 TO WS-V
           PERFORM ONE-VALUE
           MOVE 9999999.99 TO WS-V
           PERFORM ONE-VALUE
           MOVE -9999999.99 TO WS-V
           PERFORM ONE-VALUE
           MOVE 123456789 TO WS-V
           PERFORM ONE-VALUE
           MOVE -123456789 TO WS-V
           PERFORM ONE-VALUE
           MOVE 999999999 TO WS-V
           PERFORM ONE-VALUE
           MOVE 123456789012345678 TO WS-V
           PERFORM ONE-VALUE
           MOVE -123456789012345678 TO WS-V
           PERFORM ONE-VALUE
           MOVE 0.5 TO WS-V
           PERFORM ONE-VALUE
           MOVE -7 TO WS-V
           PERFORM ONE-VALUE
           MOVE 3.1 TO WS-V
           PERFORM ONE-VALUE
           MOVE 42 TO WS-V
           PERFORM ONE-VALUE
           CLOSE OUT-FILE
           STOP RUN.
       ONE-VALUE.
           MOVE WS-V TO N-ZONED
           IF N-ZONED = WS-V
               MOVE 'K' TO WS-FLAG(1)
           ELSE
               MOVE 'T' TO WS-FLAG(1)
           END-IF
           MOVE WS-V TO N-ZONED-U
           IF N-ZONED-U = WS-V
               MOVE 'K' TO WS-FLAG(2)
           ELSE
               MOVE 'T' TO WS-FLAG(2)
           END-IF
           MOVE WS-V TO N-ZONED-LS
           IF N-ZONED-LS = WS-V
               MOVE 'K' TO WS-FLAG(3)
           ELSE
               MOVE 'T' TO WS-FLAG(3)
           END-IF
           MOVE WS-V TO N-ZONED-TS
           IF N-ZONED-TS = WS-V
               MOVE 'K' TO WS-FLAG(4)
           ELSE
               MOVE 'T' TO WS-FLAG(4)
           END-IF
           MOVE WS-V TO N-ZONED-L
           IF N-ZONED-L = WS-V
               MOVE 'K' TO WS-FLAG(5)
           ELSE
               MOVE 'T' TO WS-FLAG(5)
           END-IF
           MOVE WS-V TO N-ZONED-INT
           IF N-ZONED-INT = WS-V
               MOVE 'K' TO WS-FLAG(6)
           ELSE
               MOVE 'T' TO WS-FLAG(6)
           END-IF
           MOVE WS-V TO N-PACKED
           IF N-PACKED = WS-V
               MOVE 'K' TO WS-FLAG(7)
           ELSE
               MOVE 'T' TO WS-FLAG(7)
           END-IF
           MOVE WS-V TO N-PACKED-EVEN
           IF N-PACKED-EVEN = WS-V
               MOVE 'K' TO WS-FLAG(8)
           ELSE
               MOVE 'T' TO WS-FLAG(8)
           END-IF
           MOVE WS-V TO N-PACKED-U
           IF N-PACKED-U = WS-V
               MOVE 'K' TO WS-FLAG(9)
           ELSE
               MOVE 'T' TO WS-FLAG(9)
           END-IF
           MOVE WS-V TO N-PACKED-BIG
           IF N-PACKED-BIG = WS-V
               MOVE 'K' TO WS-FLAG(10)
           ELSE
               MOVE 'T' TO WS-FLAG(10)
           END-IF
           MOVE WS-V TO N-BIN-2
           IF N-BIN-2 = WS-V
               MOVE 'K' TO WS-FLAG(11)
           ELSE
               MOVE 'T' TO WS-FLAG(11)
           END-IF
           MOVE WS-V TO N-BIN-4
           IF N-BIN-4 = WS-V
               MOVE 'K' TO WS-FLAG(12)
           ELSE
               MOVE 'T' TO WS-FLAG(12)
           END-IF
           MOVE WS-V TO N-BIN-8
           IF N-BIN-8 = WS-V
               MOVE 'K' TO WS-FLAG(13)
           ELSE
               MOVE 'T' TO WS-FLAG(13)
           END-IF
           MOVE WS-V TO N-BIN-U
           IF N-BIN-U = WS-V
               MOVE 'K' TO WS-FLAG(14)
           ELSE
               MOVE 'T' TO WS-FLAG(14)
           END-IF
           MOVE WS-FLAGS TO OUT-FLAGS
           MOVE SPACES TO OUT-ITEMS
           MOVE NUM-ITEMS TO OUT-ITEMS
           WRITE OUT-REC.
