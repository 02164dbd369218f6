//! Compiler-style diagnostics for descriptors: severity, dotted field path, message, position.
//!
//! Rendering shows the offending source line with a caret under the column. This module only
//! formats; it never decides what is wrong.

use std::fmt::Write as _;

use owo_colors::OwoColorize;
use serde::{Deserialize, Serialize};

/// How bad a problem is. Only `Error` makes a descriptor invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One problem found in a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Dotted path of the field (`runner.trivial.exec`, `triggers[1]`); null for syntax errors.
    pub field: Option<String>,
    pub message: String,
    /// 1-based line, where the descriptor has one.
    pub line: Option<usize>,
    /// 1-based column (in characters), where the descriptor has one.
    pub column: Option<usize>,
}

impl Diagnostic {
    pub fn error(field: Option<String>, message: impl Into<String>, pos: Option<Pos>) -> Self {
        Self::new(Severity::Error, field, message, pos)
    }

    pub fn warning(field: Option<String>, message: impl Into<String>, pos: Option<Pos>) -> Self {
        Self::new(Severity::Warning, field, message, pos)
    }

    fn new(severity: Severity, field: Option<String>, message: impl Into<String>, pos: Option<Pos>) -> Self {
        Diagnostic {
            severity,
            field,
            message: message.into(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders the diagnostic like a compiler: headline, location, source line and caret.
    ///
    /// `file` names the descriptor; `source` is its text when available.
    pub fn render(&self, file: &str, source: Option<&str>, color: bool) -> String {
        let mut out = String::new();
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        // One line each, whatever the descriptor's keys hold (a newline in a key must not make
        // a line of its own).
        let one_line = |s: &str| for_terminal(s).replace('\n', "\\n");
        let message = one_line(&self.message);
        let head = match &self.field {
            Some(f) => format!("{label}: {}: {message}", one_line(f)),
            None => format!("{label}: {message}"),
        };
        let file = for_terminal(file);
        if color {
            match self.severity {
                Severity::Error => {
                    let _ = writeln!(out, "{}", head.red().bold());
                }
                Severity::Warning => {
                    let _ = writeln!(out, "{}", head.yellow().bold());
                }
            }
        } else {
            let _ = writeln!(out, "{head}");
        }
        match (self.line, self.column) {
            (Some(line), col) => {
                let _ = writeln!(out, "  --> {file}:{line}:{}", col.unwrap_or(1));
                if let Some(text) = source.and_then(|s| source_line(s, line)) {
                    let gutter = line.to_string().len();
                    let pad = " ".repeat(gutter);
                    let text = for_terminal(&text.replace('\t', " ")).into_owned();
                    let _ = writeln!(out, "{pad} |");
                    let _ = writeln!(out, "{line} | {text}");
                    let caret_pad = " ".repeat(col.unwrap_or(1).saturating_sub(1));
                    let caret = if color { "^".red().bold().to_string() } else { "^".to_string() };
                    let _ = writeln!(out, "{pad} | {caret_pad}{caret}");
                }
            }
            (None, _) => {
                let _ = writeln!(out, "  --> {file}");
            }
        }
        out
    }
}

/// Line `n` (1-based) of `src`, with line breaks as YAML counts them (`\n`, `\r\n` and a lone `\r`).
pub fn source_line(src: &str, n: usize) -> Option<&str> {
    yaml_lines(src).nth(n.checked_sub(1)?)
}

/// The lines of `src` as YAML counts them.
pub fn yaml_lines(src: &str) -> impl Iterator<Item = &str> {
    src.split('\n').flat_map(|l| {
        let l = l.strip_suffix('\r').unwrap_or(l);
        l.split('\r')
    })
}

/// A 1-based position in a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_caret_under_column() {
        let d = Diagnostic::error(
            Some("meta.name".into()),
            "must not contain whitespace",
            Some(Pos { line: 2, column: 9 }),
        );
        let src = "meta:\n  name: \"a b\"\n";
        let text = d.render("docspell-addon.yml", Some(src), false);
        insta::assert_snapshot!(text, @r#"
        error: meta.name: must not contain whitespace
          --> docspell-addon.yml:2:9
          |
        2 |   name: "a b"
          |         ^
        "#);
    }
}

/// `text` made safe to print on a terminal: control characters (C0 but newline and tab, DEL,
/// C1) are shown escaped (`\x1b`, `\u{9b}`), so that what an addon or its descriptor says can
/// neither set the window title, clear the screen, move the cursor nor overwrite a line.
pub fn for_terminal(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| (c.is_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c);
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            if (c as u32) < 0x80 {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod terminal_tests {
    #[test]
    fn control_characters_are_shown_not_obeyed() {
        let evil = "\u{1b}]0;title\u{7}\u{1b}[2Jcleared\r\u{9b}31m ok\tand\nnext";
        let clean = super::for_terminal(evil);
        assert!(!clean.chars().any(|c| c.is_control() && c != '\n' && c != '\t'), "{clean:?}");
        assert!(clean.contains("\\x1b]0;title\\x07") && clean.contains("\\u{9b}") && clean.contains("\\x0d"));
        assert!(clean.contains("\tand\nnext"));
        assert!(matches!(super::for_terminal("plain"), std::borrow::Cow::Borrowed(_)));
    }
}
