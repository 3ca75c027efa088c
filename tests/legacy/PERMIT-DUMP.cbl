      * PERMIT-DUMP: PRINTS THE INDEXED MASTER FILE, ONE PERMIT A
      * LINE IN KEY ORDER: NUMBER|STATUS|FEE|UNITS. THE PICKUP TEST
      * (TESTS/IT/PICKUP.RS) COMPARES IT WITH THE EXPECTED STATE.
      * USAGE: PERMIT-DUMP <MASTER FILE>
       IDENTIFICATION DIVISION.
       PROGRAM-ID. PERMIT-DUMP.
       ENVIRONMENT DIVISION.
       INPUT-OUTPUT SECTION.
       FILE-CONTROL.
           SELECT MASTER ASSIGN TO WS-MASTER-NAME
               ORGANIZATION IS INDEXED
               ACCESS MODE IS SEQUENTIAL
               RECORD KEY IS PM-PERMIT-NO
               FILE STATUS IS WS-MST-STATUS.
       DATA DIVISION.
       FILE SECTION.
       FD  MASTER.
       COPY 'PERMIT-MST.cpy'.
       WORKING-STORAGE SECTION.
       01  WS-MASTER-NAME          PIC X(400).
       01  WS-MST-STATUS           PIC XX.
       01  WS-FEE                  PIC -(7)9.99.
       01  WS-UNITS                PIC -(4)9.
       01  WS-EOF                  PIC X VALUE 'N'.
       PROCEDURE DIVISION.
       MAIN-PARA.
           ACCEPT WS-MASTER-NAME FROM ARGUMENT-VALUE
           OPEN INPUT MASTER
           IF WS-MST-STATUS = '35'
               STOP RUN
           END-IF
           IF WS-MST-STATUS NOT = '00'
               DISPLAY 'CANNOT OPEN MASTER: ' WS-MST-STATUS
                   UPON SYSERR
               MOVE 2 TO RETURN-CODE
               STOP RUN
           END-IF
           PERFORM UNTIL WS-EOF = 'Y'
               READ MASTER NEXT RECORD
                   AT END MOVE 'Y' TO WS-EOF
                   NOT AT END
                       MOVE PM-FEE TO WS-FEE
                       MOVE PM-UNITS TO WS-UNITS
                       DISPLAY PM-PERMIT-NO '|'
                           FUNCTION TRIM(PM-STATUS) '|'
                           FUNCTION TRIM(WS-FEE) '|'
                           FUNCTION TRIM(WS-UNITS)
               END-READ
           END-PERFORM
           CLOSE MASTER
           STOP RUN.
