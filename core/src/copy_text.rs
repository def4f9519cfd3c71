//! Rows in PostgreSQL's COPY text format: tab-separated columns, one row per line, `\N` for
//! NULL, and backslash escapes for the characters that would otherwise end a column or row.

use std::fmt::Display;

/// Builds the COPY text stream of one statement, row by row.
#[derive(Debug, Default)]
pub struct CopyText {
    buffer: String,
    columns_in_row: usize,
}

impl CopyText {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a column holding `value`'s text (numbers, decimals: no escaping needed).
    pub fn plain(&mut self, value: impl Display) -> &mut Self {
        use std::fmt::Write;
        self.separate();
        let _ = write!(self.buffer, "{value}");
        self
    }

    /// Appends a text column, escaped; `None` is NULL.
    pub fn text(&mut self, value: Option<&str>) -> &mut Self {
        self.separate();
        let Some(value) = value else {
            self.buffer.push_str("\\N");
            return self;
        };
        for c in value.chars() {
            match c {
                '\\' => self.buffer.push_str("\\\\"),
                '\t' => self.buffer.push_str("\\t"),
                '\n' => self.buffer.push_str("\\n"),
                '\r' => self.buffer.push_str("\\r"),
                c => self.buffer.push(c),
            }
        }
        self
    }

    /// Ends the current row.
    pub fn end_row(&mut self) {
        self.buffer.push('\n');
        self.columns_in_row = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buffer.into_bytes()
    }

    fn separate(&mut self) {
        if self.columns_in_row > 0 {
            self.buffer.push('\t');
        }
        self.columns_in_row += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_tab_separated_and_rows_end_with_a_newline() {
        let mut copy = CopyText::new();
        copy.plain(7).plain("19.99").text(None).end_row();
        copy.plain(8).plain("1.00").text(Some("ok")).end_row();
        assert_eq!(
            String::from_utf8(copy.into_bytes()).unwrap(),
            "7\t19.99\t\\N\n8\t1.00\tok\n"
        );
    }

    #[test]
    fn text_that_could_end_a_column_or_a_row_is_escaped() {
        let mut copy = CopyText::new();
        copy.text(Some("tab\there\nnew line \\ back\rslash"))
            .end_row();
        assert_eq!(
            String::from_utf8(copy.into_bytes()).unwrap(),
            "tab\\there\\nnew line \\\\ back\\rslash\n"
        );
    }

    #[test]
    fn the_text_n_is_not_null() {
        let mut copy = CopyText::new();
        copy.text(Some("\\N")).end_row();
        assert_eq!(String::from_utf8(copy.into_bytes()).unwrap(), "\\\\N\n");
    }
}
