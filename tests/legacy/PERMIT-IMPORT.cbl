      * PERMIT-IMPORT: THE COUNTY'S BATCH IMPORTER, AS A 1998 SHOP
      * WOULD WRITE IT. READS ONE DELIVERED FILE OF PERMIT-UPD
      * RECORDS (37 BYTES, NO LINE ENDS: RECORD_END = "NONE"),
      * FRAMED BY A PERMIT-HDR AND A PERMIT-TRL RECORD, CHECKS THE
      * TRAILER'S COUNT AND FEE HASH TOTAL AND EVERY RECORD'S STATUS,
      * THEN EITHER APPLIES ALL ADDS/CHANGES/DELETES TO THE INDEXED
      * MASTER FILE AND WRITES <FILE>.ACK, OR APPLIES NOTHING AND
      * WRITES <FILE>.ERR: A REASON, THEN ONE LINE
      * '<DELIVERY_ID> <REASON>' A REFUSED RECORD. ANSWERS ARE
      * WRITTEN UNDER <ANSWER>.TMP AND RENAMED INTO PLACE.
      *
      * USAGE: PERMIT-IMPORT <FILE> <ASCII|CP037> <TARGET> <MASTER>
      * CP037: THE TEXT ITEMS ARE CONVERTED FROM EBCDIC WITH INSPECT
      * ... CONVERTING (GNUCOBOL 3.1 DOES NOT IMPLEMENT CODE-SET);
      * BUILD THAT VARIANT WITH -FSIGN=EBCDIC SO THAT THE CONVERTED
      * TRAILING OVERPUNCH ({ A-I } J-R) READS AS IBM'S.
       IDENTIFICATION DIVISION.
       PROGRAM-ID. PERMIT-IMPORT.
       ENVIRONMENT DIVISION.
       INPUT-OUTPUT SECTION.
       FILE-CONTROL.
           SELECT IN-FILE ASSIGN TO WS-IN-NAME
               ORGANIZATION IS SEQUENTIAL
               FILE STATUS IS WS-IN-STATUS.
           SELECT MASTER ASSIGN TO WS-MASTER-NAME
               ORGANIZATION IS INDEXED
               ACCESS MODE IS DYNAMIC
               RECORD KEY IS PM-PERMIT-NO
               FILE STATUS IS WS-MST-STATUS.
           SELECT ANSWER ASSIGN TO WS-ANSWER-TMP
               ORGANIZATION IS LINE SEQUENTIAL
               FILE STATUS IS WS-ANS-STATUS.
       DATA DIVISION.
       FILE SECTION.
       FD  IN-FILE.
       01  IN-REC                  PIC X(37).
       FD  MASTER.
       COPY 'PERMIT-MST.cpy'.
       FD  ANSWER.
       01  ANSWER-LINE             PIC X(200).
       WORKING-STORAGE SECTION.
       COPY 'PERMIT-UPD.cpy'.
       01  WS-IN-NAME              PIC X(400).
       01  WS-ENCODING             PIC X(10).
       01  WS-TARGET               PIC X(100).
       01  WS-MASTER-NAME          PIC X(400).
       01  WS-ANSWER-NAME          PIC X(410).
       01  WS-ANSWER-TMP           PIC X(414).
       01  WS-IN-STATUS            PIC XX.
       01  WS-MST-STATUS           PIC XX.
       01  WS-ANS-STATUS           PIC XX.
       01  WS-EOF                  PIC X.
       01  WS-PASS                 PIC X(5).
       01  WS-REC                  PIC X(37).
       01  WS-COUNT                PIC 9(8) VALUE 0.
       01  WS-SUM                  PIC S9(13)V99 VALUE 0.
       01  WS-TRAILERS             PIC 9(4) VALUE 0.
       01  WS-HEADERS              PIC 9(4) VALUE 0.
       01  WS-FILE-REASON          PIC X(120) VALUE SPACES.
       01  WS-REFUSED              PIC 9(4) VALUE 0.
       01  WS-REFUSALS.
           05  WS-REFUSAL          PIC X(160) OCCURS 2000 TIMES.
       01  WS-SEQ-EDIT             PIC Z(8)9.
       01  WS-NUM-EDIT             PIC Z(7)9.
       01  WS-SUM-EDIT             PIC -(13)9.99.
       01  WS-APPLIED              PIC 9(8) VALUE 0.
       01  WS-I                    PIC 9(4).
      * EBCDIC (CP037) BYTES OF DIGITS, LETTERS, SPACE, { } * + - .
      * AND THE ASCII CHARACTERS THEY STAND FOR, IN THE SAME ORDER.
       01  WS-EBCDIC.
           05  FILLER PIC X(10) VALUE X'F0F1F2F3F4F5F6F7F8F9'.
           05  FILLER PIC X(9)  VALUE X'C1C2C3C4C5C6C7C8C9'.
           05  FILLER PIC X(9)  VALUE X'D1D2D3D4D5D6D7D8D9'.
           05  FILLER PIC X(8)  VALUE X'E2E3E4E5E6E7E8E9'.
           05  FILLER PIC X(7)  VALUE X'40C0D05C4E604B'.
       01  WS-ASCII.
           05  FILLER PIC X(10) VALUE '0123456789'.
           05  FILLER PIC X(9)  VALUE 'ABCDEFGHI'.
           05  FILLER PIC X(9)  VALUE 'JKLMNOPQR'.
           05  FILLER PIC X(8)  VALUE 'STUVWXYZ'.
           05  FILLER PIC X(7)  VALUE ' {}*+-.'.
       PROCEDURE DIVISION.
       MAIN-PARA.
           ACCEPT WS-IN-NAME FROM ARGUMENT-VALUE
           ACCEPT WS-ENCODING FROM ARGUMENT-VALUE
           ACCEPT WS-TARGET FROM ARGUMENT-VALUE
           ACCEPT WS-MASTER-NAME FROM ARGUMENT-VALUE
           PERFORM CHECK-FILE
           IF WS-FILE-REASON = SPACES AND WS-REFUSED = 0
               PERFORM APPLY-FILE
               PERFORM WRITE-ACK
           ELSE
               PERFORM WRITE-ERR
           END-IF
           STOP RUN.

      * PASS 1: COUNT, HASH TOTAL, STATUS CODES. NOTHING APPLIED.
       CHECK-FILE.
           MOVE 'CHECK' TO WS-PASS
           PERFORM READ-FILE
           IF WS-FILE-REASON NOT = SPACES
               EXIT PARAGRAPH
           END-IF
           IF WS-HEADERS NOT = 1 OR WS-TRAILERS NOT = 1
               MOVE 'FILE NOT FRAMED BY ONE HEADER AND ONE TRAILER'
                   TO WS-FILE-REASON
               EXIT PARAGRAPH
           END-IF
           IF PT-COUNT NOT = WS-COUNT
               MOVE PT-COUNT TO WS-NUM-EDIT
               STRING 'TRAILER COUNT ' FUNCTION TRIM(WS-NUM-EDIT)
                   ' BUT ' DELIMITED BY SIZE INTO WS-FILE-REASON
               MOVE WS-COUNT TO WS-NUM-EDIT
               STRING FUNCTION TRIM(WS-FILE-REASON) ' '
                   FUNCTION TRIM(WS-NUM-EDIT) ' RECORDS'
                   DELIMITED BY SIZE INTO WS-FILE-REASON
               EXIT PARAGRAPH
           END-IF
           IF PT-FEE-TOTAL NOT = WS-SUM
               MOVE WS-SUM TO WS-SUM-EDIT
               STRING 'TRAILER FEE TOTAL DOES NOT MATCH: RECORDS SUM '
                   FUNCTION TRIM(WS-SUM-EDIT)
                   DELIMITED BY SIZE INTO WS-FILE-REASON
           END-IF.

       CHECK-RECORD.
           PERFORM CONVERT-RECORD
           EVALUATE WS-REC(1:1)
               WHEN 'H'
                   ADD 1 TO WS-HEADERS
               WHEN 'T'
                   ADD 1 TO WS-TRAILERS
                   MOVE WS-REC TO PERMIT-TRL
               WHEN 'A' WHEN 'C' WHEN 'D'
                   IF WS-TRAILERS > 0
                       MOVE 'A RECORD AFTER THE TRAILER'
                           TO WS-FILE-REASON
                   END-IF
                   ADD 1 TO WS-COUNT
                   MOVE WS-REC TO PERMIT-UPD
                   ADD PU-FEE TO WS-SUM
                   PERFORM CHECK-STATUS
               WHEN OTHER
                   MOVE 'A RECORD OF UNKNOWN TYPE' TO WS-FILE-REASON
           END-EVALUATE.

      * THE COUNTY'S STATUS CODES. A DELETE CARRIES NONE.
       CHECK-STATUS.
           IF PU-DELETE
               EXIT PARAGRAPH
           END-IF
           EVALUATE PU-STATUS
               WHEN 'NEW' WHEN 'REVIEW' WHEN 'APPROVED'
               WHEN 'ISSUED' WHEN 'CLOSED' WHEN 'REVOKED'
                   CONTINUE
               WHEN OTHER
                   IF WS-REFUSED = 2000
                       MOVE 'MORE THAN 2000 RECORDS REFUSED'
                           TO WS-FILE-REASON
                       EXIT PARAGRAPH
                   END-IF
                   ADD 1 TO WS-REFUSED
                   MOVE PU-SEQ TO WS-SEQ-EDIT
                   MOVE SPACES TO WS-REFUSAL(WS-REFUSED)
                   STRING FUNCTION TRIM(WS-TARGET) ':'
                       FUNCTION TRIM(WS-SEQ-EDIT)
                       ' UNKNOWN STATUS CODE '''
                       FUNCTION TRIM(PU-STATUS) ''' FOR PERMIT '
                       PU-PERMIT-NO
                       DELIMITED BY SIZE
                       INTO WS-REFUSAL(WS-REFUSED)
           END-EVALUATE.

      * CP037: ONLY THE TEXT AND ZONED ITEMS; PACKED AND BINARY
      * BYTES ARE THE SAME IN BOTH WORLDS.
       CONVERT-RECORD.
           IF WS-ENCODING NOT = 'CP037'
               EXIT PARAGRAPH
           END-IF
           INSPECT WS-REC(1:1) CONVERTING WS-EBCDIC TO WS-ASCII
           IF WS-REC(1:1) = 'H' OR WS-REC(1:1) = 'T'
               INSPECT WS-REC CONVERTING WS-EBCDIC TO WS-ASCII
           ELSE
               INSPECT WS-REC(2:18) CONVERTING WS-EBCDIC TO WS-ASCII
               INSPECT WS-REC(27:11) CONVERTING WS-EBCDIC TO WS-ASCII
           END-IF.

      * PASS 2: EVERY RECORD CHECKED GOOD; APPLY THEM IN ORDER.
       APPLY-FILE.
           OPEN I-O MASTER
           IF WS-MST-STATUS = '35'
               OPEN OUTPUT MASTER
               CLOSE MASTER
               OPEN I-O MASTER
           END-IF
           IF WS-MST-STATUS NOT = '00'
               DISPLAY 'CANNOT OPEN MASTER: ' WS-MST-STATUS
                   UPON SYSERR
               MOVE 2 TO RETURN-CODE
               STOP RUN
           END-IF
           MOVE 'APPLY' TO WS-PASS
           PERFORM READ-FILE
           CLOSE MASTER.

      * ONE PASS OVER THE DELIVERED FILE: CHECK OR APPLY EACH RECORD.
       READ-FILE.
           OPEN INPUT IN-FILE
           IF WS-IN-STATUS NOT = '00'
               MOVE 'CANNOT OPEN THE FILE' TO WS-FILE-REASON
               EXIT PARAGRAPH
           END-IF
           MOVE 'N' TO WS-EOF
           PERFORM UNTIL WS-EOF = 'Y'
               READ IN-FILE INTO WS-REC
                   AT END MOVE 'Y' TO WS-EOF
                   NOT AT END
                       IF WS-PASS = 'CHECK'
                           PERFORM CHECK-RECORD
                       ELSE
                           PERFORM APPLY-RECORD
                       END-IF
               END-READ
           END-PERFORM
           CLOSE IN-FILE.

       APPLY-RECORD.
           PERFORM CONVERT-RECORD
           IF WS-REC(1:1) = 'H' OR WS-REC(1:1) = 'T'
               EXIT PARAGRAPH
           END-IF
           MOVE WS-REC TO PERMIT-UPD
           ADD 1 TO WS-APPLIED
           MOVE PU-PERMIT-NO TO PM-PERMIT-NO
           IF PU-DELETE
               DELETE MASTER RECORD
                   INVALID KEY CONTINUE
               END-DELETE
               EXIT PARAGRAPH
           END-IF
           MOVE PU-STATUS TO PM-STATUS
           MOVE PU-FEE TO PM-FEE
           MOVE PU-UNITS TO PM-UNITS
           MOVE PU-SEQ TO PM-LAST-SEQ
      * AN ADD FOR A PERMIT ON FILE, OR A CHANGE FOR ONE NOT ON
      * FILE (A REPEATED DELIVERY), REPLACES OR ADDS IT WHOLE.
           WRITE PERMIT-MST
               INVALID KEY
                   REWRITE PERMIT-MST
                       INVALID KEY
                           DISPLAY 'REWRITE FAILED: ' WS-MST-STATUS
                               UPON SYSERR
                   END-REWRITE
           END-WRITE.

       OPEN-ANSWER.
           MOVE SPACES TO WS-ANSWER-TMP
           STRING FUNCTION TRIM(WS-ANSWER-NAME) '.tmp'
               DELIMITED BY SIZE INTO WS-ANSWER-TMP
           OPEN OUTPUT ANSWER.

       CLOSE-ANSWER.
           CLOSE ANSWER
           CALL 'CBL_RENAME_FILE' USING WS-ANSWER-TMP WS-ANSWER-NAME.

       WRITE-ACK.
           MOVE SPACES TO WS-ANSWER-NAME
           STRING FUNCTION TRIM(WS-IN-NAME) '.ack'
               DELIMITED BY SIZE INTO WS-ANSWER-NAME
           PERFORM OPEN-ANSWER
           MOVE WS-APPLIED TO WS-NUM-EDIT
           MOVE SPACES TO ANSWER-LINE
           STRING 'APPLIED ' FUNCTION TRIM(WS-NUM-EDIT) ' RECORDS'
               DELIMITED BY SIZE INTO ANSWER-LINE
           WRITE ANSWER-LINE
           PERFORM CLOSE-ANSWER.

       WRITE-ERR.
           MOVE SPACES TO WS-ANSWER-NAME
           STRING FUNCTION TRIM(WS-IN-NAME) '.err'
               DELIMITED BY SIZE INTO WS-ANSWER-NAME
           PERFORM OPEN-ANSWER
           MOVE SPACES TO ANSWER-LINE
           IF WS-FILE-REASON NOT = SPACES
               MOVE WS-FILE-REASON TO ANSWER-LINE
           ELSE
               MOVE WS-REFUSED TO WS-NUM-EDIT
               STRING FUNCTION TRIM(WS-NUM-EDIT)
                   ' RECORD(S) REFUSED; NOTHING APPLIED'
                   DELIMITED BY SIZE INTO ANSWER-LINE
           END-IF
           WRITE ANSWER-LINE
           PERFORM VARYING WS-I FROM 1 BY 1 UNTIL WS-I > WS-REFUSED
               MOVE WS-REFUSAL(WS-I) TO ANSWER-LINE
               WRITE ANSWER-LINE
           END-PERFORM
           PERFORM CLOSE-ANSWER.
