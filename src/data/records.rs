//! Reading records from data files; a bad record names its file and line.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{LorsError, Result};

/// How to read records.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// From the file: `.txt`/`.raw` is plain text; JSON records with `instruction` and
    /// `output` are Alpaca-style; otherwise records need `text`.
    #[default]
    Auto,
    /// Records with a `text` field (or a plain-text file).
    Text,
    /// Records with `instruction`, optional `input`, and `output`.
    Alpaca,
}

/// One training record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A document.
    Text(String),
    /// An instruction with optional input, and the response to learn.
    Instruction {
        instruction: String,
        input: String,
        output: String,
    },
}

/// The records of one file, with how many bad ones were skipped.
#[derive(Debug, Clone)]
pub struct RecordSet {
    pub path: PathBuf,
    pub records: Vec<Record>,
    pub skipped: usize,
}

fn record_from_json(
    value: &serde_json::Value,
    format: DataFormat,
) -> std::result::Result<Record, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| "a record must be a JSON object".to_string())?;
    let field = |name: &str| -> std::result::Result<Option<String>, String> {
        match obj.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("field `{name}` must be a string, got {other}")),
        }
    };
    let alpaca = match format {
        DataFormat::Alpaca => true,
        DataFormat::Text => false,
        DataFormat::Auto => obj.contains_key("instruction") && !obj.contains_key("text"),
    };
    if alpaca {
        let instruction =
            field("instruction")?.ok_or_else(|| "missing field `instruction`".to_string())?;
        let output = field("output")?.ok_or_else(|| "missing field `output`".to_string())?;
        Ok(Record::Instruction {
            instruction,
            input: field("input")?.unwrap_or_default(),
            output,
        })
    } else {
        let text = field("text")?.ok_or_else(|| "missing field `text`".to_string())?;
        Ok(Record::Text(text))
    }
}

/// Where parsed records go, and the count of bad ones skipped.
struct Sink<'a> {
    path: PathBuf,
    format: DataFormat,
    skip_bad: bool,
    records: usize,
    skipped: usize,
    each: &'a mut dyn FnMut(Record) -> Result<()>,
}

impl<'a> Sink<'a> {
    fn new(
        path: &Path,
        format: DataFormat,
        skip_bad: bool,
        each: &'a mut dyn FnMut(Record) -> Result<()>,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            format,
            skip_bad,
            records: 0,
            skipped: 0,
            each,
        }
    }

    /// A record, or the reason it is bad, from line `line`.
    fn take(&mut self, line: usize, parsed: std::result::Result<Record, String>) -> Result<()> {
        match parsed {
            Ok(r) => {
                self.records += 1;
                (self.each)(r)
            }
            Err(_) if self.skip_bad => {
                self.skipped += 1;
                Ok(())
            }
            Err(detail) => Err(LorsError::Record {
                path: self.path.clone(),
                line,
                detail,
            }),
        }
    }

    /// The record of a JSON value.
    fn take_json(
        &mut self,
        line: usize,
        value: std::result::Result<serde_json::Value, String>,
    ) -> Result<()> {
        let format = self.format;
        self.take(line, value.and_then(|v| record_from_json(&v, format)))
    }

    /// The count of skipped records; an error when there were no good ones.
    fn finish(self) -> Result<usize> {
        if self.records == 0 {
            return Err(LorsError::parse(
                &self.path,
                if self.skipped > 0 {
                    format!("all {} records are bad", self.skipped)
                } else {
                    "no records".to_string()
                },
            ));
        }
        Ok(self.skipped)
    }
}

/// Read every record of `path`. With `skip_bad`, bad records are counted instead of failing.
pub fn read_records(path: &Path, format: DataFormat, skip_bad: bool) -> Result<RecordSet> {
    let mut records = Vec::new();
    let (path, skipped) = for_each_record(path, format, skip_bad, &mut |r| {
        records.push(r);
        Ok(())
    })?;
    Ok(RecordSet {
        path,
        records,
        skipped,
    })
}

/// Where each row of a file goes: its line (a parquet file's row, from 1) and its JSON value,
/// or why the row is not JSON.
pub type EachRow<'a> =
    &'a mut dyn FnMut(usize, std::result::Result<serde_json::Value, String>) -> Result<()>;

/// The lower-case extension of `path`.
fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Hand every row of a JSON Lines, JSON array or parquet file (a hub reference is fetched
/// first) to `each` as a JSON value, as it is read; returns the resolved path. Parquet rows
/// keep their nested lists and structs.
pub fn for_each_json_row(path: &Path, each: EachRow) -> Result<PathBuf> {
    let path = crate::sources::resolve_data_path(path)?;
    if extension(&path) == "parquet" {
        crate::error::catch_parser_panic(&path, "parquet", || read_parquet(&path, each))?;
    } else {
        let file = std::fs::File::open(&path).map_err(|e| LorsError::io(&path, e))?;
        parse_json_stream(std::io::BufReader::new(file), &path, each)?;
    }
    Ok(path)
}

/// Hand every record of `path` to `each` as it is read (JSON Lines files line by line, so
/// memory stays bounded by the longest line); the resolved path and the count of bad records
/// skipped.
pub fn for_each_record(
    path: &Path,
    format: DataFormat,
    skip_bad: bool,
    each: &mut dyn FnMut(Record) -> Result<()>,
) -> Result<(PathBuf, usize)> {
    let resolved = crate::sources::resolve_data_path(path)?;
    let mut sink = Sink::new(&resolved, format, skip_bad, each);
    if matches!(extension(&resolved).as_str(), "txt" | "raw" | "text") {
        let file = std::fs::File::open(&resolved).map_err(|e| LorsError::io(&resolved, e))?;
        parse_stream(std::io::BufReader::new(file), true, &mut sink)?;
    } else {
        for_each_json_row(&resolved, &mut |line, value| sink.take_json(line, value))?;
    }
    Ok((resolved, sink.finish()?))
}

/// Records of a JSON Lines, JSON array or (with `plain_text`) plain-text stream; `path` names
/// it in errors. A UTF-8 byte-order mark is skipped; UTF-16/32 text is an error with a hint.
pub fn parse_records(
    reader: impl BufRead,
    path: &Path,
    plain_text: bool,
    format: DataFormat,
    skip_bad: bool,
) -> Result<RecordSet> {
    let mut records = Vec::new();
    let mut each = |r| {
        records.push(r);
        Ok(())
    };
    let mut sink = Sink::new(path, format, skip_bad, &mut each);
    parse_stream(reader, plain_text, &mut sink)?;
    let skipped = sink.finish()?;
    Ok(RecordSet {
        path: path.to_path_buf(),
        records,
        skipped,
    })
}

fn parse_stream(mut reader: impl BufRead, plain_text: bool, sink: &mut Sink) -> Result<()> {
    let path = sink.path.clone();
    if plain_text {
        check_encoding(&mut reader, &path)?;
        if sink.format == DataFormat::Alpaca {
            return Err(LorsError::parse(
                &path,
                "a plain-text file has no instruction records",
            ));
        }
        let text = read_utf8(&mut reader, &path)?;
        if !text.trim().is_empty() {
            sink.take(1, Ok(Record::Text(text)))?;
        }
        return Ok(());
    }
    parse_json_stream(reader, &path, &mut |line, value| {
        sink.take_json(line, value)
    })
}

/// The rows of a JSON array or JSON Lines stream (after the encoding check).
fn parse_json_stream(mut reader: impl BufRead, path: &Path, each: EachRow) -> Result<()> {
    check_encoding(&mut reader, path)?;
    if first_non_space(&mut reader, path)? == Some(b'[') {
        let text = read_utf8(&mut reader, path)?;
        parse_json_array(&text, path, each)
    } else {
        parse_json_lines(reader, path, each)
    }
}

/// A JSON array of records; each element's line is reported.
fn parse_json_array(text: &str, path: &Path, each: EachRow) -> Result<()> {
    let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| LorsError::Record {
        path: path.to_path_buf(),
        line: e.line(),
        detail: format!("invalid JSON: {e}"),
    })?;
    let mut line = 1;
    let mut counted_to = 0;
    for raw in items {
        let offset = raw.get().as_ptr() as usize - text.as_ptr() as usize;
        line += bytecount_newlines(&text.as_bytes()[counted_to..offset]);
        counted_to = offset;
        each(
            line,
            serde_json::from_str(raw.get()).map_err(|e| e.to_string()),
        )?;
    }
    Ok(())
}

fn bytecount_newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// JSON Lines, one line in memory at a time.
fn parse_json_lines(mut reader: impl BufRead, path: &Path, each: EachRow) -> Result<()> {
    let mut buf = Vec::new();
    for line_no in 1.. {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| LorsError::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        let value = match std::str::from_utf8(&buf) {
            Err(e) => Err(format!(
                "not valid UTF-8 (at byte {} of the line); convert the file to UTF-8",
                e.valid_up_to() + 1
            )),
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}")),
        };
        each(line_no, value)?;
    }
    Ok(())
}

/// Skip a UTF-8 byte-order mark; refuse UTF-16 and UTF-32 text (by its mark, or by the NUL
/// bytes that ASCII text has in those encodings) with a hint.
fn check_encoding(reader: &mut impl BufRead, path: &Path) -> Result<()> {
    let head = reader.fill_buf().map_err(|e| LorsError::io(path, e))?;
    if head.starts_with(&[0xEF, 0xBB, 0xBF]) {
        reader.consume(3);
        return Ok(());
    }
    let utf16_or_32 = head.starts_with(&[0xFF, 0xFE])
        || head.starts_with(&[0xFE, 0xFF])
        || head.starts_with(&[0, 0, 0xFE, 0xFF])
        || head.iter().take(64).any(|&b| b == 0);
    if utf16_or_32 {
        return Err(LorsError::parse(
            path,
            "looks UTF-16 or UTF-32 encoded (a byte-order mark or NUL bytes); lors reads \
             UTF-8: convert it, e.g. `iconv -f UTF-16 -t UTF-8 FILE > FILE.utf8`",
        ));
    }
    Ok(())
}

/// The first byte that is not ASCII whitespace, without consuming anything after it.
fn first_non_space(reader: &mut impl BufRead, path: &Path) -> Result<Option<u8>> {
    loop {
        let buf = reader.fill_buf().map_err(|e| LorsError::io(path, e))?;
        if buf.is_empty() {
            return Ok(None);
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => return Ok(Some(buf[i])),
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// The rest of the stream as text; invalid UTF-8 is an error naming the line.
fn read_utf8(reader: &mut impl BufRead, path: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| LorsError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        LorsError::Record {
            path: path.to_path_buf(),
            line: bytecount_newlines(&e.as_bytes()[..at]) + 1,
            detail: "not valid UTF-8; convert the file to UTF-8".into(),
        }
    })
}

/// Rows of a parquet file (as the hub's dataset viewer writes them) as JSON objects; errors
/// name the row (as `line`, from 1).
fn read_parquet(path: &Path, each: EachRow) -> Result<()> {
    use parquet::file::reader::SerializedFileReader;
    let path = path.to_path_buf();
    let file = std::fs::File::open(&path).map_err(|e| LorsError::io(&path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| LorsError::parse(&path, format!("not a readable parquet file: {e}")))?;
    for (i, row) in reader.into_iter().enumerate() {
        // A row the reader cannot decode means a damaged file, not a bad record: stop even
        // with `skip_bad` (the reader would report the same error for ever).
        let row = row.map_err(|e| LorsError::Record {
            path: path.clone(),
            line: i + 1,
            detail: format!("row {}: {e}", i + 1),
        })?;
        // A bad record's error names the row, not just the "line".
        each(i + 1, Ok(row.to_json_value())).map_err(|e| match e {
            LorsError::Record { path, line, detail } => LorsError::Record {
                path,
                line,
                detail: format!("row {line}: {detail}"),
            },
            other => other,
        })?;
    }
    Ok(())
}
