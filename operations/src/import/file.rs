//! Reading an import file a segment at a time, and turning its lines into orders.
//!
//! A rejected line's reason names the rule it broke, never what it holds: the file is
//! whatever a client pointed the import at, and the report goes back to that client.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

use super::RejectedLine;
use crate::heartbeat::Progress;
use orders_core::failure::FailureType;
use orders_core::order_input::ValidOrder;

/// The failure type every rejected line of a file carries.
const INVALID: FailureType = FailureType::InvalidOrder;

/// The longest line accepted; longer lines are rejected without being held in memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// The longest `order_ref`.
pub const MAX_ORDER_REF: usize = 200;

/// A valid line: the order and its reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportLine {
    pub line: u64,
    pub order_ref: String,
    pub order: ValidOrder,
}

/// What one segment of the file held.
#[derive(Debug, Default)]
pub struct Segment {
    pub valid: Vec<ImportLine>,
    pub rejected: Vec<RejectedLine>,
    /// Lines read, blank ones included.
    pub lines: u64,
    /// Byte offset of the first line after this segment.
    pub next_offset: u64,
    pub eof: bool,
}

/// Reads up to `max_lines` lines starting at byte `offset`, which is line `first_line`, of
/// `file`, whose SHA-256 is `file_digest` (hex; it names the derived references). Bytes read
/// are counted in `progress`.
pub fn read_segment(
    mut file: File,
    file_digest: &str,
    offset: u64,
    first_line: u64,
    max_lines: u64,
    progress: &Progress,
) -> std::io::Result<Segment> {
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut segment = Segment {
        next_offset: offset,
        ..Segment::default()
    };
    let mut buffer = Vec::new();
    while segment.lines < max_lines {
        if progress.stopped() {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        buffer.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buffer)?;
        if read == 0 {
            segment.eof = true;
            break;
        }
        let line = first_line + segment.lines;
        segment.lines += 1;
        segment.next_offset += read as u64;
        progress.advance(read as u64);
        if buffer.len() > MAX_LINE_BYTES && buffer.last() != Some(&b'\n') {
            segment.next_offset += skip_rest_of_line(&mut reader)?;
            segment.rejected.push(RejectedLine {
                line,
                order_ref: None,
                reason: format!("{INVALID}: line is longer than {MAX_LINE_BYTES} bytes"),
            });
            continue;
        }
        match parse_line(line, &buffer, file_digest) {
            Ok(Some(valid)) => segment.valid.push(valid),
            Ok(None) => {}
            Err(rejected) => segment.rejected.push(rejected),
        }
    }
    if !segment.eof && reader.fill_buf()?.is_empty() {
        segment.eof = true;
    }
    Ok(segment)
}

fn skip_rest_of_line(reader: &mut impl BufRead) -> std::io::Result<u64> {
    let mut skipped = 0;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(skipped);
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(end) => {
                reader.consume(end + 1);
                return Ok(skipped + end as u64 + 1);
            }
            None => {
                let n = chunk.len();
                reader.consume(n);
                skipped += n as u64;
            }
        }
    }
}

/// Parses line `line` of the file: `Ok(None)` for a blank line, the order if valid, the
/// reason otherwise. The rules are PlaceOrder's, plus an optional `order_ref` string.
pub fn parse_line(
    line: u64,
    bytes: &[u8],
    file_digest: &str,
) -> Result<Option<ImportLine>, RejectedLine> {
    let reject = |order_ref: Option<String>, reason: String| RejectedLine {
        line,
        order_ref,
        reason,
    };
    let bytes = match line {
        1 => bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes),
        _ => bytes,
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| reject(None, format!("{INVALID}: line is not UTF-8")))?
        .trim();
    if text.is_empty() {
        return Ok(None);
    }
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        reject(
            None,
            format!("{INVALID}: malformed JSON{}", syntax_error(&e)),
        )
    })?;
    let order_ref = match value.as_object_mut().and_then(|o| o.remove("order_ref")) {
        None => derived_ref(file_digest, line),
        Some(serde_json::Value::String(r)) if !r.is_empty() && r.len() <= MAX_ORDER_REF => r,
        Some(_) => {
            return Err(reject(
                None,
                format!("{INVALID}: order_ref must be a string of 1 to {MAX_ORDER_REF} bytes"),
            ));
        }
    };
    match ValidOrder::from_json(&value) {
        Ok(order) => Ok(Some(ImportLine {
            line,
            order_ref,
            order,
        })),
        Err(invalid) => Err(reject(Some(order_ref), format!("{INVALID}: {invalid}"))),
    }
}

/// The reference of a line without one: the file's digest and the line number, so importing
/// the same file again finds the same references, while another file (or an edited one) is
/// new data, whatever its lines look like.
fn derived_ref(file_digest: &str, line: u64) -> String {
    format!(
        "file-{}-line-{line}",
        &file_digest[..file_digest.len().min(16)]
    )
}

/// `: <what>` for a JSON syntax error: serde_json's syntax messages are fixed texts with a
/// position (`EOF while parsing a string at line 1 column 9`), never the input.
fn syntax_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => format!(": {e}"),
        Category::Io | Category::Data => String::new(),
    }
}

/// SHA-256 of the file, hex, read in a stream; bytes hashed are counted in `progress`, and
/// the hash gives up (`Interrupted`) once `progress` is stopped.
pub fn file_digest(file: File, progress: &Progress) -> std::io::Result<String> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    loop {
        if progress.stopped() {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        hasher.update(chunk);
        let n = chunk.len();
        reader.consume(n);
        progress.advance(n as u64);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const DIGEST: &str = "0123456789abcdef0123";
    const GOOD: &str =
        r#"{"customer_id": 1, "items": [{"product_id": 7, "quantity": 2, "unit_price": "19.99"}]}"#;

    #[test]
    fn a_line_keeps_its_order_ref_or_gets_one_named_by_file_and_line() {
        let with_ref = format!(r#"{{"order_ref": "A-1", {}"#, &GOOD[1..]);
        let parsed = parse_line(3, with_ref.as_bytes(), DIGEST).unwrap().unwrap();
        assert_eq!(parsed.order_ref, "A-1");
        let derived = parse_line(4, GOOD.as_bytes(), DIGEST).unwrap().unwrap();
        assert_eq!(derived.order_ref, "file-0123456789abcdef-line-4");
        let elsewhere = parse_line(4, GOOD.as_bytes(), "fedcba9876543210ff")
            .unwrap()
            .unwrap();
        assert_ne!(
            elsewhere.order_ref, derived.order_ref,
            "another file, another order"
        );
    }

    #[test]
    fn bad_lines_are_rejected_with_their_number_and_placeorder_reason() {
        for (text, reason) in [
            ("{not json", "malformed JSON"),
            (r#"{"customer_id": 1, "items": []}"#, "at least one item"),
            (
                r#"{"customer_id": 1, "items": [{"product_id": 7, "quantity": -1, "unit_price": "1.00"}]}"#,
                "quantity",
            ),
            (
                r#"{"customer_id": 1, "items": [{"product_id": 7, "quantity": 1, "unit_price": "1.001"}]}"#,
                "decimal",
            ),
            (
                r#"{"order_ref": 5, "customer_id": 1, "items": []}"#,
                "order_ref must be a string",
            ),
        ] {
            let rejected = parse_line(9, text.as_bytes(), DIGEST).unwrap_err();
            assert_eq!(rejected.line, 9);
            assert!(
                rejected.reason.contains(reason),
                "{text}: {}",
                rejected.reason
            );
        }
        assert_eq!(
            parse_line(2, b"   \n", DIGEST).unwrap(),
            None,
            "blank lines are skipped"
        );
        let with_bom = [b"\xEF\xBB\xBF".as_slice(), GOOD.as_bytes()].concat();
        assert!(
            parse_line(1, &with_bom, DIGEST).unwrap().is_some(),
            "a UTF-8 BOM is skipped"
        );
    }

    #[test]
    fn a_rejected_line_names_the_rule_it_broke_never_the_values_it_holds() {
        let item = r#"{"product_id": 7, "quantity": 1, "unit_price": "1.00"}"#;
        for (text, names) in [
            (format!(r#"{{"customer_id": "SECRET", "items": [{item}]}}"#), "customer_id"),
            (format!(r#"{{"order_ref": {{"k": "SECRET"}}, "customer_id": 1, "items": [{item}]}}"#), "order_ref"),
            (format!(r#"{{"order_ref": "{}", "customer_id": 1, "items": [{item}]}}"#, "SECRET".repeat(40)), "order_ref"),
            (format!(r#"{{"SECRET": 1, "customer_id": 1, "items": [{item}]}}"#), "unknown field"),
            (r#"{"customer_id": 1, "items": [{"product_id": 7, "quantity": 1, "unit_price": "SECRET"}]}"#.to_owned(), "unit_price"),
            (r#"{"customer_id": "SECRET"#.to_owned(), "malformed JSON"),
            ("SECRET".to_owned(), "malformed JSON"),
        ] {
            let rejected = parse_line(1, text.as_bytes(), DIGEST).unwrap_err();
            assert!(rejected.reason.contains(names), "{text}: {}", rejected.reason);
            assert!(!rejected.reason.contains("SECRET"), "{text}: {}", rejected.reason);
        }
    }

    #[test]
    fn segments_resume_at_the_byte_offset_they_ended_on() {
        let dir = std::env::temp_dir().join(format!("import-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("orders.jsonl");
        let mut file = File::create(&path).unwrap();
        for _ in 0..5 {
            writeln!(file, "{GOOD}").unwrap();
        }
        write!(file, "{{broken").unwrap();
        drop(file);

        let open = || File::open(&path).unwrap();
        let progress = Progress::default();
        let first = read_segment(open(), DIGEST, 0, 1, 4, &progress).unwrap();
        assert_eq!((first.valid.len(), first.lines, first.eof), (4, 4, false));
        assert_eq!(
            progress.bytes(),
            first.next_offset,
            "progress counts the bytes read"
        );
        let rest = read_segment(
            open(),
            DIGEST,
            first.next_offset,
            1 + first.lines,
            4,
            &progress,
        )
        .unwrap();
        assert_eq!(
            rest.valid.iter().map(|l| l.line).collect::<Vec<_>>(),
            vec![5]
        );
        assert_eq!(
            rest.rejected[0].line, 6,
            "the last line has no newline and is still read"
        );
        assert!(rest.eof);
        assert_eq!(rest.next_offset, std::fs::metadata(&path).unwrap().len());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
