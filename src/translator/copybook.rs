//! COBOL copybook text (fixed-format source) in, record [`Layout`]s out: the
//! offset, length, picture and usage of every elementary item of each 01-level.
//!
//! The subset (README "COBOL flat files" has the table): levels 01–49 with
//! group items; `PIC X(n)`, `A(n)`, `9(n)`, `S9(n)`, `V9(m)`; `USAGE DISPLAY`
//! (zoned; sign as trailing overpunch unless `SIGN LEADING`/`TRAILING`
//! [`SEPARATE`]), `COMP-3`/`PACKED-DECIMAL`, `COMP`/`BINARY`/`COMP-4`/`COMP-5`
//! (big-endian, 2/4/8 bytes by digits); `OCCURS n TIMES`; `FILLER`; `VALUE`
//! (what an unmapped item or a FILLER holds); 88-levels read and skipped. Columns 1–6
//! (sequence area) and 73–80 are ignored, `*` or `/` in column 7 is a comment
//! line, `*>` starts a comment, as a COBOL compiler reads fixed format.
//!
//! **Invariants:** every clause is either understood or refused with its line
//! and column ([`CopybookError`]); nothing is guessed. `REDEFINES`, `OCCURS
//! DEPENDING ON`, `COMP-1`/`COMP-2`, edited and scaled pictures, `SYNC`,
//! `JUSTIFIED`, level 66/77 are refused. A layout's fields are in offset order,
//! do not overlap and cover the record exactly.

use std::fmt;

/// A copybook problem, placed on its line and column.
#[derive(Debug, Clone, PartialEq)]
pub struct CopybookError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for CopybookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// One 01-level record.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub name: String,
    pub line: usize,
    /// Bytes in one record (without any `record_end`).
    pub length: usize,
    /// Every elementary item (OCCURS expanded, `NAME(1)`, `NAME(1,2)`), in offset order.
    pub fields: Vec<Field>,
}

/// One elementary item.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The data name; `FILLER` for fillers; OCCURS subscripts as `NAME(2)`.
    pub name: String,
    pub line: usize,
    pub offset: usize,
    pub length: usize,
    pub pic: Pic,
    /// The picture as written (`S9(7)V99`), for messages and the ruler.
    pub picture: String,
    pub usage: Usage,
    /// The item's `VALUE`: what its bytes hold when nothing is mapped to it
    /// (always, for a FILLER).
    pub fill: Option<Fill>,
}

impl Field {
    pub fn is_filler(&self) -> bool {
        self.name == "FILLER" || self.name.starts_with("FILLER(")
    }

    /// `PIC S9(7)V99 COMP-3`, as a COBOL programmer would write it.
    pub fn describe(&self) -> String {
        let usage = match self.usage {
            Usage::Display(Sign::TrailingOverpunch) => "",
            Usage::Display(Sign::LeadingOverpunch) => " SIGN LEADING",
            Usage::Display(Sign::LeadingSeparate) => " SIGN LEADING SEPARATE",
            Usage::Display(Sign::TrailingSeparate) => " SIGN TRAILING SEPARATE",
            Usage::Packed => " COMP-3",
            Usage::Binary => " COMP",
        };
        format!("PIC {}{usage}", self.picture)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pic {
    /// `X(n)` (or `A(n)` when `alphabetic`): `length` characters.
    Text { alphabetic: bool },
    /// `S9(n)V9(m)`: `digits` in all, `scale` of them after the implied point.
    Number {
        signed: bool,
        digits: u32,
        scale: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Usage {
    /// Zoned decimal (or text); how a signed number carries its sign.
    Display(Sign),
    /// COMP-3 / PACKED-DECIMAL: two digits a byte, sign in the last nibble.
    Packed,
    /// COMP / BINARY / COMP-4 / COMP-5: big-endian two's complement, 2/4/8 bytes.
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sign {
    /// The default: the last digit's zone carries the sign (`{ABCDEFGHI` / `}JKLMNOPQR`).
    TrailingOverpunch,
    /// `SIGN LEADING`: the first digit carries it.
    LeadingOverpunch,
    /// `SIGN LEADING SEPARATE`: a `+`/`-` byte before the digits.
    LeadingSeparate,
    /// `SIGN TRAILING SEPARATE`: a `+`/`-` byte after the digits.
    TrailingSeparate,
}

/// A `VALUE` clause.
#[derive(Debug, Clone, PartialEq)]
pub enum Fill {
    /// A quoted literal (or `ALL 'x'` when `all`).
    Text {
        text: String,
        all: bool,
    },
    /// `X'..'`.
    Bytes(Vec<u8>),
    /// A numeric literal, as written.
    Number(String),
    Spaces,
    Zeros,
    HighValues,
    LowValues,
}

/// Longest record accepted: an OCCURS typo must not allocate gigabytes.
const MAX_RECORD: usize = 1 << 20;

/// Reads a copybook (bytes as Latin-1, so a stray accented comment is no error).
pub fn parse(source: &[u8]) -> Result<Vec<Layout>, CopybookError> {
    let text: String = source.iter().map(|&b| b as char).collect();
    let tokens = tokenize(&text)?;
    let entries = entries(tokens)?;
    let nodes = tree(entries)?;
    let mut layouts = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        if node.parent.is_none() {
            layouts.push(layout(&nodes, i)?);
        }
    }
    if layouts.is_empty() {
        return Err(CopybookError {
            line: 1,
            column: 1,
            message: "no 01-level record found (is the text in columns 8–72?)".into(),
        });
    }
    Ok(layouts)
}

impl Layout {
    /// The elementary item `name`; an error naming what there is otherwise.
    pub fn field(&self, name: &str) -> Result<&Field, String> {
        let upper = name.to_ascii_uppercase();
        let mut found = self.fields.iter().filter(|f| f.name == upper);
        match (found.next(), found.next()) {
            (Some(f), None) => Ok(f),
            (Some(_), Some(_)) => Err(format!(
                "`{name}` names more than one item of {}; give the items distinct names",
                self.name
            )),
            (None, _) => {
                let occurs = self
                    .fields
                    .iter()
                    .any(|f| f.name.starts_with(&format!("{upper}(")));
                Err(if occurs {
                    format!(
                        "`{name}` is an OCCURS item of {}; name one occurrence, e.g. `{upper}(1)`",
                        self.name
                    )
                } else {
                    format!(
                        "the copybook's record {} has no elementary item `{name}`",
                        self.name
                    )
                })
            }
        }
    }
}

// ---------------------------------------------------------------- tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    /// A quoted literal, quotes removed.
    Literal(String),
    /// `X'C1C2'`.
    Hex(Vec<u8>),
    Period,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
    column: usize,
}

fn err<T>(line: usize, column: usize, message: impl Into<String>) -> Result<T, CopybookError> {
    Err(CopybookError {
        line,
        column,
        message: message.into(),
    })
}

fn tokenize(text: &str) -> Result<Vec<Token>, CopybookError> {
    let mut tokens = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let chars: Vec<char> = raw.trim_end_matches('\r').chars().collect();
        if chars.len() < 7 {
            continue;
        }
        match chars[6] {
            ' ' => {}
            '*' | '/' | 'D' | 'd' => continue,
            '-' => {
                return err(
                    line,
                    7,
                    "continuation lines (`-` in column 7) are not supported; keep each literal on one line",
                );
            }
            '\t' => {
                return err(
                    line,
                    7,
                    "a tab in the first 7 columns: expand tabs to spaces (the copybook is fixed format: text in columns 8–72)",
                );
            }
            c => {
                return err(
                    line,
                    7,
                    format!(
                        "column 7 holds `{c}`: it is the indicator area (space, `*` or `/`); is the text shifted? (fixed format: columns 1–6 are the sequence area, text in 8–72)"
                    ),
                );
            }
        }
        let end = chars.len().min(72);
        let area = &chars[7..end];
        let mut j = 0;
        while j < area.len() {
            let c = area[j];
            let column = j + 8;
            if c.is_whitespace() || c == ',' || c == ';' {
                j += 1;
                continue;
            }
            if c == '*' && area.get(j + 1) == Some(&'>') {
                break;
            }
            let hex = (c == 'X' || c == 'x') && matches!(area.get(j + 1), Some('\'' | '"'));
            if c == '\'' || c == '"' || hex {
                let start = if hex { j + 1 } else { j };
                let quote = area[start];
                let mut k = start + 1;
                let mut value = String::new();
                loop {
                    match area.get(k) {
                        None => {
                            return err(line, column, "a literal that does not end on its line");
                        }
                        Some(&q) if q == quote => {
                            if area.get(k + 1) == Some(&quote) {
                                value.push(quote);
                                k += 2;
                            } else {
                                k += 1;
                                break;
                            }
                        }
                        Some(&ch) => {
                            value.push(ch);
                            k += 1;
                        }
                    }
                }
                let tok = if hex {
                    Tok::Hex(hex_bytes(&value).ok_or_else(|| CopybookError {
                        line,
                        column,
                        message: format!("X'{value}' is not an even number of hex digits"),
                    })?)
                } else {
                    Tok::Literal(value)
                };
                tokens.push(Token { tok, line, column });
                j = k;
                continue;
            }
            let mut k = j;
            while k < area.len() && !area[k].is_whitespace() && area[k] != '\'' && area[k] != '"' {
                k += 1;
            }
            let mut word: String = area[j..k].iter().collect();
            // A comma or semicolon followed by a space is a separator.
            while word.ends_with([',', ';']) {
                word.pop();
            }
            let period = word.ends_with('.');
            if period {
                word.pop();
            }
            if !word.is_empty() {
                tokens.push(Token {
                    tok: Tok::Word(word.to_ascii_uppercase()),
                    line,
                    column,
                });
            }
            if period {
                tokens.push(Token {
                    tok: Tok::Period,
                    line,
                    column: column + (k - j) - 1,
                });
            }
            j = k;
        }
    }
    Ok(tokens)
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

// ---------------------------------------------------------------- entries

#[derive(Debug, Clone)]
struct Entry {
    level: u8,
    name: String,
    line: usize,
    column: usize,
    /// The picture as written, and where.
    picture: Option<(String, usize, usize)>,
    usage: Option<UsageWord>,
    sign: Option<Sign>,
    occurs: Option<usize>,
    value: Option<Fill>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum UsageWord {
    Display,
    Packed,
    Binary,
}

/// Words that start a clause (so an entry without a data name is a FILLER).
const CLAUSES: &[&str] = &[
    "PIC",
    "PICTURE",
    "USAGE",
    "VALUE",
    "VALUES",
    "OCCURS",
    "SIGN",
    "LEADING",
    "TRAILING",
    "REDEFINES",
    "DISPLAY",
    "COMP",
    "COMPUTATIONAL",
    "COMP-3",
    "COMPUTATIONAL-3",
    "PACKED-DECIMAL",
    "BINARY",
    "COMP-4",
    "COMPUTATIONAL-4",
    "COMP-5",
    "COMPUTATIONAL-5",
    "COMP-1",
    "COMP-2",
    "COMPUTATIONAL-1",
    "COMPUTATIONAL-2",
    "JUST",
    "JUSTIFIED",
    "BLANK",
    "SYNC",
    "SYNCHRONIZED",
    "EXTERNAL",
    "GLOBAL",
    "INDEXED",
];

fn usage_word(word: &str) -> Option<Result<UsageWord, &'static str>> {
    Some(match word {
        "DISPLAY" => Ok(UsageWord::Display),
        "COMP-3" | "COMPUTATIONAL-3" | "PACKED-DECIMAL" => Ok(UsageWord::Packed),
        "COMP" | "COMPUTATIONAL" | "BINARY" | "COMP-4" | "COMPUTATIONAL-4" | "COMP-5"
        | "COMPUTATIONAL-5" => Ok(UsageWord::Binary),
        "COMP-1" | "COMP-2" | "COMPUTATIONAL-1" | "COMPUTATIONAL-2" => {
            Err("floating point (COMP-1/COMP-2) is not supported")
        }
        "COMP-X" | "COMP-6" | "POINTER" | "INDEX" | "NATIONAL" | "DISPLAY-1" => {
            Err("this USAGE is not supported; use DISPLAY, COMP-3 or COMP")
        }
        _ => return None,
    })
}

fn entries(tokens: Vec<Token>) -> Result<Vec<Entry>, CopybookError> {
    let mut out = Vec::new();
    let mut current: Vec<Token> = Vec::new();
    for t in tokens {
        if t.tok == Tok::Period {
            if !current.is_empty() {
                if let Some(e) = entry(&current)? {
                    out.push(e);
                }
                current.clear();
            }
        } else {
            current.push(t);
        }
    }
    if let Some(last) = current.last() {
        return err(
            last.line,
            last.column,
            "the last entry does not end with a period",
        );
    }
    Ok(out)
}

/// One data description entry; `None` for an 88-level (read and skipped).
fn entry(tokens: &[Token]) -> Result<Option<Entry>, CopybookError> {
    let first = &tokens[0];
    let level = match &first.tok {
        Tok::Word(w) if w.len() <= 2 && w.chars().all(|c| c.is_ascii_digit()) => {
            w.parse::<u8>().expect("one or two digits")
        }
        other => {
            return err(
                first.line,
                first.column,
                format!(
                    "expected a level number (01–49) to start an entry, found {}",
                    show(other)
                ),
            );
        }
    };
    match level {
        88 => return Ok(None),
        66 => {
            return err(
                first.line,
                first.column,
                "level 66 (RENAMES) is not supported",
            );
        }
        77 => {
            return err(
                first.line,
                first.column,
                "level 77 is not supported; a record starts at level 01",
            );
        }
        1..=49 => {}
        _ => {
            return err(
                first.line,
                first.column,
                format!("level {level} is not a level number (01–49, 88)"),
            );
        }
    }
    let mut i = 1;
    let name = match tokens.get(1).map(|t| &t.tok) {
        Some(Tok::Word(w)) if !CLAUSES.contains(&w.as_str()) => {
            i = 2;
            w.clone()
        }
        _ => "FILLER".to_string(),
    };
    let mut e = Entry {
        level,
        name,
        line: first.line,
        column: first.column,
        picture: None,
        usage: None,
        sign: None,
        occurs: None,
        value: None,
    };
    let word_at = |i: usize| match tokens.get(i).map(|t| &t.tok) {
        Some(Tok::Word(w)) => Some(w.as_str()),
        _ => None,
    };
    while i < tokens.len() {
        let t = &tokens[i];
        let Tok::Word(word) = &t.tok else {
            return err(
                t.line,
                t.column,
                format!("unexpected {} in the entry of {}", show(&t.tok), e.name),
            );
        };
        i += 1;
        match word.as_str() {
            "PIC" | "PICTURE" => {
                if word_at(i) == Some("IS") {
                    i += 1;
                }
                match tokens.get(i) {
                    Some(Token {
                        tok: Tok::Word(p),
                        line,
                        column,
                    }) => {
                        e.picture = Some((p.clone(), *line, *column));
                        i += 1;
                    }
                    _ => return err(t.line, t.column, "PIC without a picture string"),
                }
            }
            "USAGE" => {
                if word_at(i) == Some("IS") {
                    i += 1;
                }
                let Some(u) = word_at(i) else {
                    return err(t.line, t.column, "USAGE without a usage");
                };
                let at = &tokens[i];
                match usage_word(u) {
                    Some(Ok(u)) => e.usage = Some(u),
                    Some(Err(why)) => return err(at.line, at.column, format!("{u}: {why}")),
                    None => {
                        return err(at.line, at.column, format!("`{u}` is not a USAGE"));
                    }
                }
                i += 1;
            }
            "SIGN" | "LEADING" | "TRAILING" => {
                let mut w = word.as_str();
                if w == "SIGN" {
                    if word_at(i) == Some("IS") {
                        i += 1;
                    }
                    match word_at(i) {
                        Some(x @ ("LEADING" | "TRAILING")) => {
                            w = x;
                            i += 1;
                        }
                        _ => return err(t.line, t.column, "SIGN needs LEADING or TRAILING"),
                    }
                }
                let separate = word_at(i) == Some("SEPARATE");
                if separate {
                    i += 1;
                    if word_at(i) == Some("CHARACTER") {
                        i += 1;
                    }
                }
                e.sign = Some(match (w, separate) {
                    ("LEADING", false) => Sign::LeadingOverpunch,
                    ("LEADING", true) => Sign::LeadingSeparate,
                    ("TRAILING", false) => Sign::TrailingOverpunch,
                    _ => Sign::TrailingSeparate,
                });
            }
            "OCCURS" => {
                let n = match tokens.get(i).map(|t| &t.tok) {
                    Some(Tok::Word(n)) => n.parse::<usize>().ok(),
                    _ => None,
                };
                let Some(n) = n.filter(|&n| n >= 1) else {
                    return err(t.line, t.column, "OCCURS needs a count: `OCCURS 12 TIMES`");
                };
                i += 1;
                if let Some(w @ ("TO" | "DEPENDING")) = word_at(i) {
                    let at = &tokens[i];
                    return err(
                        at.line,
                        at.column,
                        format!(
                            "OCCURS … {w}: OCCURS DEPENDING ON (a variable-length table) is not supported; only a fixed `OCCURS n TIMES`"
                        ),
                    );
                }
                if word_at(i) == Some("TIMES") {
                    i += 1;
                }
                e.occurs = Some(n);
            }
            "INDEXED" => {
                if word_at(i) == Some("BY") {
                    i += 1;
                }
                // Index names: words up to the next clause.
                while let Some(w) = word_at(i) {
                    if CLAUSES.contains(&w) {
                        break;
                    }
                    i += 1;
                }
            }
            "VALUE" | "VALUES" => {
                if matches!(word_at(i), Some("IS" | "ARE")) {
                    i += 1;
                }
                let mut all = false;
                if word_at(i) == Some("ALL") {
                    all = true;
                    i += 1;
                }
                let Some(v) = tokens.get(i) else {
                    return err(t.line, t.column, "VALUE without a value");
                };
                i += 1;
                e.value = Some(match &v.tok {
                    Tok::Literal(s) => Fill::Text {
                        text: s.clone(),
                        all,
                    },
                    Tok::Hex(b) => Fill::Bytes(b.clone()),
                    Tok::Word(w) => match w.as_str() {
                        "SPACE" | "SPACES" => Fill::Spaces,
                        "ZERO" | "ZEROS" | "ZEROES" => Fill::Zeros,
                        "HIGH-VALUE" | "HIGH-VALUES" => Fill::HighValues,
                        "LOW-VALUE" | "LOW-VALUES" => Fill::LowValues,
                        n if is_number(n) => Fill::Number(n.to_string()),
                        other => {
                            return err(
                                v.line,
                                v.column,
                                format!(
                                    "`{other}` is not a VALUE this reader knows (a literal, a number, SPACES, ZEROS, HIGH-VALUES, LOW-VALUES)"
                                ),
                            );
                        }
                    },
                    Tok::Period => unreachable!("entries hold no periods"),
                });
            }
            "REDEFINES" => {
                return err(
                    t.line,
                    t.column,
                    format!(
                        "REDEFINES on {} is not supported: one layout per record; describe the variant you send as its own 01-level",
                        e.name
                    ),
                );
            }
            "JUST" | "JUSTIFIED" | "BLANK" | "SYNC" | "SYNCHRONIZED" | "EXTERNAL" | "GLOBAL" => {
                return err(
                    t.line,
                    t.column,
                    format!("the {word} clause is not supported"),
                );
            }
            other => match usage_word(other) {
                Some(Ok(u)) => e.usage = Some(u),
                Some(Err(why)) => return err(t.line, t.column, format!("{other}: {why}")),
                None => {
                    return err(
                        t.line,
                        t.column,
                        format!("unexpected `{other}` in the entry of {}", e.name),
                    );
                }
            },
        }
    }
    Ok(Some(e))
}

fn is_number(w: &str) -> bool {
    let digits = w.strip_prefix(['+', '-']).unwrap_or(w);
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|&c| c == '.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit())
}

fn show(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("`{w}`"),
        Tok::Literal(l) => format!("the literal '{l}'"),
        Tok::Hex(_) => "a hex literal".into(),
        Tok::Period => "a period".into(),
    }
}

// ---------------------------------------------------------------- tree

struct Node {
    entry: Entry,
    parent: Option<usize>,
    children: Vec<usize>,
}

fn tree(entries: Vec<Entry>) -> Result<Vec<Node>, CopybookError> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    for entry in entries {
        while let Some(&top) = stack.last() {
            if nodes[top].entry.level >= entry.level {
                stack.pop();
            } else {
                break;
            }
        }
        let parent = stack.last().copied();
        if parent.is_none() && entry.level != 1 {
            return err(
                entry.line,
                entry.column,
                format!(
                    "{} (level {:02}) is outside any record: a record starts at level 01",
                    entry.name, entry.level
                ),
            );
        }
        if let Some(p) = parent
            && nodes[p].entry.picture.is_some()
        {
            return err(
                entry.line,
                entry.column,
                format!(
                    "{} is under {}, which has a PIC: an item with a PIC cannot hold items",
                    entry.name, nodes[p].entry.name
                ),
            );
        }
        let index = nodes.len();
        if let Some(p) = parent {
            nodes[p].children.push(index);
        }
        nodes.push(Node {
            entry,
            parent,
            children: Vec::new(),
        });
        stack.push(index);
    }
    Ok(nodes)
}

// ---------------------------------------------------------------- layout

fn layout(nodes: &[Node], root: usize) -> Result<Layout, CopybookError> {
    let mut fields = Vec::new();
    let mut offset = 0;
    let r = &nodes[root].entry;
    if r.occurs.is_some() {
        return err(
            r.line,
            r.column,
            "OCCURS on a level-01 record is not allowed",
        );
    }
    place(
        nodes,
        root,
        &[],
        UsageWord::Display,
        Sign::TrailingOverpunch,
        &mut offset,
        &mut fields,
    )?;
    Ok(Layout {
        name: r.name.clone(),
        line: r.line,
        length: offset,
        fields,
    })
}

fn place(
    nodes: &[Node],
    index: usize,
    subscripts: &[usize],
    usage: UsageWord,
    sign: Sign,
    offset: &mut usize,
    fields: &mut Vec<Field>,
) -> Result<(), CopybookError> {
    let node = &nodes[index];
    let e = &node.entry;
    let usage = e.usage.unwrap_or(usage);
    let sign = e.sign.unwrap_or(sign);
    for n in 1..=e.occurs.unwrap_or(1) {
        let mut subs = subscripts.to_vec();
        if e.occurs.is_some() {
            subs.push(n);
        }
        if node.children.is_empty() {
            let field = elementary(e, &subs, usage, sign, *offset)?;
            *offset += field.length;
            fields.push(field);
        } else {
            if e.value.is_some() {
                return err(e.line, e.column, "VALUE on a group item is not supported");
            }
            for &child in &node.children {
                place(nodes, child, &subs, usage, sign, offset, fields)?;
            }
        }
        if *offset > MAX_RECORD {
            return err(
                e.line,
                e.column,
                format!(
                    "the record grows past {MAX_RECORD} bytes here (an OCCURS count too large?)"
                ),
            );
        }
    }
    Ok(())
}

fn elementary(
    e: &Entry,
    subs: &[usize],
    usage: UsageWord,
    sign: Sign,
    offset: usize,
) -> Result<Field, CopybookError> {
    let Some((picture, pline, pcolumn)) = &e.picture else {
        return err(
            e.line,
            e.column,
            format!(
                "{} has no PIC and no items under it: an elementary item needs a PIC",
                e.name
            ),
        );
    };
    let (pic, size) = parse_picture(picture).map_err(|message| CopybookError {
        line: *pline,
        column: *pcolumn,
        message: format!("PIC {picture} of {}: {message}", e.name),
    })?;
    let (usage, length) = match (pic, usage) {
        (Pic::Text { .. }, UsageWord::Display) => (Usage::Display(sign), size),
        (Pic::Text { .. }, _) => {
            return err(
                *pline,
                *pcolumn,
                format!(
                    "{} is text (PIC {picture}) but its USAGE is COMP or COMP-3: only a PIC 9 item can be packed or binary",
                    e.name
                ),
            );
        }
        (Pic::Number { signed, digits, .. }, UsageWord::Display) => {
            if e.sign.is_some() && !signed {
                return err(
                    e.line,
                    e.column,
                    format!("{} has a SIGN clause but no S in PIC {picture}", e.name),
                );
            }
            let separate = signed && matches!(sign, Sign::LeadingSeparate | Sign::TrailingSeparate);
            (
                Usage::Display(sign),
                digits as usize + usize::from(separate),
            )
        }
        (Pic::Number { digits, .. }, UsageWord::Packed) => (Usage::Packed, digits as usize / 2 + 1),
        (Pic::Number { digits, .. }, UsageWord::Binary) => {
            let length = match digits {
                1..=4 => 2,
                5..=9 => 4,
                10..=18 => 8,
                _ => {
                    return err(
                        *pline,
                        *pcolumn,
                        format!(
                            "PIC {picture} of {}: a binary item holds at most 18 digits",
                            e.name
                        ),
                    );
                }
            };
            (Usage::Binary, length)
        }
    };
    let name = if subs.is_empty() {
        e.name.clone()
    } else {
        let subs: Vec<String> = subs.iter().map(ToString::to_string).collect();
        format!("{}({})", e.name, subs.join(","))
    };
    Ok(Field {
        name,
        line: e.line,
        offset,
        length,
        pic,
        picture: picture.clone(),
        usage,
        fill: e.value.clone(),
    })
}

/// `S9(7)V99` -> the picture and its count of character positions (digits for
/// a number; S and V take none).
pub fn parse_picture(picture: &str) -> Result<(Pic, usize), String> {
    let chars: Vec<char> = picture.to_ascii_uppercase().chars().collect();
    let (mut x, mut a, mut nines, mut scale) = (0usize, 0usize, 0usize, 0usize);
    let (mut signed, mut point) = (false, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        let mut count = 1usize;
        if chars.get(i) == Some(&'(') {
            let close = chars[i..]
                .iter()
                .position(|&c| c == ')')
                .ok_or("a `(` without `)`")?;
            let n: String = chars[i + 1..i + close].iter().collect();
            count = n
                .parse()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| format!("`({n})` is not a repeat count"))?;
            i += close + 1;
        }
        match c {
            'X' => x += count,
            'A' => a += count,
            '9' => {
                nines += count;
                if point {
                    scale += count;
                }
            }
            'S' if i == 1 && count == 1 => signed = true,
            'S' => return Err("S may only come first, once".into()),
            'V' if !point && count == 1 => point = true,
            'V' => return Err("more than one V".into()),
            'P' => return Err("scaling positions (P) are not supported".into()),
            'Z' | ',' | '.' | '*' | '+' | '-' | '$' | 'B' | '0' | '/' | 'C' | 'R' | 'D' | 'E' => {
                return Err(
                    "an edited picture (Z , . * + - $ B 0 / CR DB) is not supported: a record field is PIC X, A or 9 with S and V"
                        .into(),
                );
            }
            other => return Err(format!("`{other}` is not a picture character")),
        }
        if x + a + nines > MAX_RECORD {
            return Err("too long".into());
        }
    }
    if x + a > 0 {
        if signed || point {
            return Err("S and V belong to numeric pictures (9), not X or A".into());
        }
        return Ok((
            Pic::Text {
                alphabetic: x == 0 && nines == 0,
            },
            x + a + nines,
        ));
    }
    if nines == 0 {
        return Err("no digits".into());
    }
    if nines > 31 {
        return Err(format!("{nines} digits: at most 31"));
    }
    Ok((
        Pic::Number {
            signed,
            digits: nines as u32,
            scale: scale as u32,
        },
        nines,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts each line in columns 8–72, as a COBOL editor would.
    fn cpy(lines: &[&str]) -> Vec<u8> {
        lines
            .iter()
            .map(|l| {
                if l.starts_with('*') {
                    format!("000100{l}\n")
                } else {
                    format!("000100 {l}\n")
                }
            })
            .collect::<String>()
            .into_bytes()
    }

    fn fields(lines: &[&str]) -> Vec<(String, usize, usize)> {
        let layouts = parse(&cpy(lines)).unwrap();
        layouts[0]
            .fields
            .iter()
            .map(|f| (f.name.clone(), f.offset, f.length))
            .collect()
    }

    fn error(lines: &[&str]) -> CopybookError {
        parse(&cpy(lines)).unwrap_err()
    }

    #[test]
    fn pictures() {
        let num = |signed, digits, scale| Pic::Number {
            signed,
            digits,
            scale,
        };
        let text = |alphabetic| Pic::Text { alphabetic };
        for (picture, expected) in [
            ("X(10)", Ok((text(false), 10))),
            ("XXX", Ok((text(false), 3))),
            ("A(4)", Ok((text(true), 4))),
            ("X(2)9(3)", Ok((text(false), 5))),
            ("9(5)", Ok((num(false, 5, 0), 5))),
            ("S9(7)V99", Ok((num(true, 9, 2), 9))),
            ("s9(3)v9(4)", Ok((num(true, 7, 4), 7))),
            ("V99", Ok((num(false, 2, 2), 2))),
            ("9(31)", Ok((num(false, 31, 0), 31))),
        ] {
            assert_eq!(parse_picture(picture), expected, "{picture}");
        }
        for (picture, says) in [
            ("Z,ZZ9.99", "edited picture"),
            ("9(5)P", "scaling"),
            ("9S9", "S may only come first"),
            ("9V9V9", "more than one V"),
            ("SX(3)", "S and V belong"),
            ("9(32)", "at most 31"),
            ("9(0)", "not a repeat count"),
            ("9(3", "without `)`"),
            ("Q", "not a picture character"),
            ("S", "no digits"),
        ] {
            let e = parse_picture(picture).unwrap_err();
            assert!(e.contains(says), "{picture}: {e}");
        }
    }

    #[test]
    fn lengths_by_usage_and_sign() {
        let f = fields(&[
            "01  PERMIT-UPD.",
            "    05  PU-ACTION        PIC X.",
            "    05  PU-PERMIT-NO     PIC 9(8).",
            "    05  PU-FEE           PIC S9(7)V99 COMP-3.",
            "    05  PU-FEE2          PIC S9(8) PACKED-DECIMAL.",
            "    05  PU-COUNT         PIC S9(4) COMP.",
            "    05  PU-BIG           PIC 9(9) BINARY.",
            "    05  PU-HUGE          PIC S9(18) USAGE IS COMP-5.",
            "    05  PU-LEAD          PIC S9(3) SIGN LEADING SEPARATE.",
            "    05  PU-TRAIL  PIC S9(3) SIGN IS TRAILING SEPARATE CHARACTER.",
            "    05  PU-OVER          PIC S9(3).",
            "    05  PU-C4            PIC 9(2) COMP-4.",
        ]);
        assert_eq!(
            f,
            vec![
                ("PU-ACTION".into(), 0, 1),
                ("PU-PERMIT-NO".into(), 1, 8),
                ("PU-FEE".into(), 9, 5),
                ("PU-FEE2".into(), 14, 5),
                ("PU-COUNT".into(), 19, 2),
                ("PU-BIG".into(), 21, 4),
                ("PU-HUGE".into(), 25, 8),
                ("PU-LEAD".into(), 33, 4),
                ("PU-TRAIL".into(), 37, 4),
                ("PU-OVER".into(), 41, 3),
                ("PU-C4".into(), 44, 2),
            ]
        );
    }

    #[test]
    fn groups_occurs_fillers_88_levels_and_columns() {
        let source =
            b"000100* A COMMENT LINE WITH STRAY TEXT PAST COLUMN 72 ...................XXXXXXXX\n\
000200 01  REC.                                                          SEQ00001\n\
000300     05  R-KEY          PIC X(4).                                  SEQ00002\n\
000400     05  R-STATUS       PIC X.                                     SEQ00003\n\
000500         88  R-OPEN     VALUE 'O' 'P'.                             SEQ00004\n\
000600     05  R-LINES OCCURS 2 TIMES.                                   SEQ00005\n\
000700         10  R-AMT      PIC S9(3)V9 COMP-3.                        SEQ00006\n\
000800         10  FILLER     PIC X(2) VALUE '--'.                       SEQ00007\n\
000900     05  R-GRP USAGE COMP-3.                                       SEQ00008\n\
001000         10  R-P1       PIC 9(3).                                  SEQ00009\n\
001100         10  R-P2       PIC 9(3) USAGE DISPLAY.                    SEQ00010\n\
001200     05                 PIC X(3) VALUE SPACES. *> AN UNNAMED FILLER\n\
001300/    A PAGE EJECT IS A COMMENT TOO\n";
        let layouts = parse(source).unwrap();
        let got: Vec<(String, usize, usize)> = layouts[0]
            .fields
            .iter()
            .map(|f| (f.name.clone(), f.offset, f.length))
            .collect();
        assert_eq!(
            got,
            vec![
                ("R-KEY".into(), 0, 4),
                ("R-STATUS".into(), 4, 1),
                ("R-AMT(1)".into(), 5, 3),
                ("FILLER(1)".into(), 8, 2),
                ("R-AMT(2)".into(), 10, 3),
                ("FILLER(2)".into(), 13, 2),
                ("R-P1".into(), 15, 2),
                ("R-P2".into(), 17, 3),
                ("FILLER".into(), 20, 3),
            ]
        );
        assert_eq!(layouts[0].length, 23);
        assert_eq!(
            layouts[0].fields[3].fill,
            Some(Fill::Text {
                text: "--".into(),
                all: false
            })
        );
        assert_eq!(layouts[0].fields[8].fill, Some(Fill::Spaces));
        assert_eq!(layouts[0].field("r-key").unwrap().offset, 0);
        assert!(
            layouts[0]
                .field("R-AMT")
                .unwrap_err()
                .contains("`R-AMT(1)`")
        );
        assert!(
            layouts[0]
                .field("R-NOPE")
                .unwrap_err()
                .contains("no elementary item `R-NOPE`")
        );
    }

    #[test]
    fn several_records_and_nested_occurs() {
        let layouts = parse(&cpy(&[
            "01  HDR.",
            "    05  H-TYPE  PIC X VALUE 'H'.",
            "01  TAB.",
            "    05  T-ROW OCCURS 2.",
            "        10  T-COL PIC 9 OCCURS 3 TIMES.",
        ]))
        .unwrap();
        assert_eq!(layouts.len(), 2);
        assert_eq!(layouts[1].name, "TAB");
        let names: Vec<&str> = layouts[1].fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "T-COL(1,1)",
                "T-COL(1,2)",
                "T-COL(1,3)",
                "T-COL(2,1)",
                "T-COL(2,2)",
                "T-COL(2,3)"
            ]
        );
    }

    #[test]
    fn refusals_name_line_and_column() {
        for (lines, line, column, says) in [
            (
                &[
                    "01  R.",
                    "    05  A PIC X(4).",
                    "    05  B REDEFINES A PIC 9(4).",
                ][..],
                3,
                18,
                "REDEFINES on B is not supported",
            ),
            (
                &[
                    "01  R.",
                    "    05  N PIC 99.",
                    "    05  T PIC X OCCURS 1 TO 9 DEPENDING ON N.",
                ],
                3,
                33,
                "OCCURS DEPENDING ON",
            ),
            (
                &["01  R.", "    05  F PIC S9(3) COMP-1."],
                2,
                28,
                "COMP-1/COMP-2",
            ),
            (
                &["01  R.", "    05  F USAGE COMP-2."],
                2,
                24,
                "floating point",
            ),
            (
                &["01  R.", "    05  F PIC Z,ZZ9.99."],
                2,
                22,
                "edited picture",
            ),
            (
                &["01  R.", "    05  F PIC X(3) JUST RIGHT."],
                2,
                27,
                "JUST clause",
            ),
            (
                &["01  R.", "    05  F PIC X(3) COMP-3."],
                2,
                22,
                "only a PIC 9 item",
            ),
            (
                &["01  R.", "    05  F PIC 9(19) COMP."],
                2,
                22,
                "at most 18 digits",
            ),
            (
                &["01  R.", "    05  F PIC X(3)"],
                2,
                22,
                "does not end with a period",
            ),
            (
                &["01  R.", "    05  F PIC X(3) VALUE 'AB."],
                2,
                33,
                "does not end on its line",
            ),
            (
                &["01  R.", "    05  F PIX X(3)."],
                2,
                18,
                "unexpected `PIX`",
            ),
            (&["05  F PIC X."], 1, 8, "outside any record"),
            (
                &["01  R.", "    05  G PIC X.", "        10  H PIC X."],
                3,
                16,
                "has a PIC",
            ),
            (&["01  R.", "    05  G."], 2, 12, "needs a PIC"),
            (
                &["01  R.", "    05  F PIC 9 SIGN LEADING."],
                2,
                12,
                "no S in PIC",
            ),
            (&["01  R.", "    77  F PIC 9."], 2, 12, "level 77"),
            (&["01  R.", "    66  F RENAMES A."], 2, 12, "level 66"),
        ] {
            let e = error(lines);
            assert!(e.message.contains(says), "{lines:?}: {e}");
            assert_eq!((e.line, e.column), (line, column), "{lines:?}: {e}");
        }
        // Text shifted into the indicator area (a copybook typed from column 1).
        let e = parse(b"01  REC.\n    05  X PIC X.\n").unwrap_err();
        assert_eq!((e.line, e.column), (1, 7), "{e}");
        let e = parse(b"      * only a comment\n").unwrap_err();
        assert!(e.message.contains("no 01-level"), "{e}");
    }
}
