//! Reading records from data files; a bad record names its file and line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{LorsError, Result};

/// How to read records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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

/// Read every record of `path`. With `skip_bad`, bad records are counted instead of failing.
pub fn read_records(path: &Path, format: DataFormat, skip_bad: bool) -> Result<RecordSet> {
    let path = &crate::sources::resolve_data_path(path)?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut set = RecordSet {
        path: path.to_path_buf(),
        records: Vec::new(),
        skipped: 0,
    };
    if ext == "parquet" {
        read_parquet(&mut set, format, skip_bad)?;
        return finish(set);
    }
    let text = std::fs::read_to_string(path).map_err(|e| LorsError::io(path, e))?;
    if matches!(ext.as_str(), "txt" | "raw" | "text") {
        if format == DataFormat::Alpaca {
            return Err(LorsError::parse(
                path,
                "a plain-text file has no instruction records",
            ));
        }
        if !text.trim().is_empty() {
            set.records.push(Record::Text(text));
        }
        return finish(set);
    }
    let bad = |line: usize, detail: String, set: &mut RecordSet| -> Result<()> {
        if skip_bad {
            set.skipped += 1;
            Ok(())
        } else {
            Err(LorsError::Record {
                path: path.to_path_buf(),
                line,
                detail,
            })
        }
    };
    if text.trim_start().starts_with('[') {
        // A JSON array: keep each element's position to report its line.
        let items: Vec<&RawValue> = serde_json::from_str(&text).map_err(|e| LorsError::Record {
            path: path.to_path_buf(),
            line: e.line(),
            detail: format!("invalid JSON: {e}"),
        })?;
        for raw in items {
            let offset = raw.get().as_ptr() as usize - text.as_ptr() as usize;
            let line = text[..offset].matches('\n').count() + 1;
            let parsed = serde_json::from_str::<serde_json::Value>(raw.get())
                .map_err(|e| e.to_string())
                .and_then(|v| record_from_json(&v, format));
            match parsed {
                Ok(r) => set.records.push(r),
                Err(detail) => bad(line, detail, &mut set)?,
            }
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<serde_json::Value>(line)
                .map_err(|e| format!("invalid JSON: {e}"))
                .and_then(|v| record_from_json(&v, format));
            match parsed {
                Ok(r) => set.records.push(r),
                Err(detail) => bad(i + 1, detail, &mut set)?,
            }
        }
    }
    finish(set)
}

/// Records of a parquet file (as the hub's dataset viewer writes them): each row's string
/// columns are read like the fields of a JSON record; errors name the row (as `line`, from 1).
fn read_parquet(set: &mut RecordSet, format: DataFormat, skip_bad: bool) -> Result<()> {
    use parquet::file::reader::SerializedFileReader;
    use parquet::record::Field;
    let path = set.path.clone();
    let file = std::fs::File::open(&path).map_err(|e| LorsError::io(&path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| LorsError::parse(&path, format!("not a readable parquet file: {e}")))?;
    for (i, row) in reader.into_iter().enumerate() {
        let parsed = row.map_err(|e| e.to_string()).and_then(|row| {
            let fields: serde_json::Map<String, serde_json::Value> = row
                .get_column_iter()
                .map(|(name, field)| {
                    let value = match field {
                        Field::Str(s) => serde_json::Value::String(s.clone()),
                        Field::Null => serde_json::Value::Null,
                        other => serde_json::Value::String(other.to_string()),
                    };
                    (name.clone(), value)
                })
                .collect();
            record_from_json(&serde_json::Value::Object(fields), format)
        });
        match parsed {
            Ok(r) => set.records.push(r),
            Err(_) if skip_bad => set.skipped += 1,
            Err(detail) => {
                return Err(LorsError::Record {
                    path,
                    line: i + 1,
                    detail: format!("row {}: {detail}", i + 1),
                })
            }
        }
    }
    Ok(())
}

fn finish(set: RecordSet) -> Result<RecordSet> {
    if set.records.is_empty() {
        return Err(LorsError::parse(
            &set.path,
            if set.skipped > 0 {
                format!("all {} records are bad", set.skipped)
            } else {
                "no records".to_string()
            },
        ));
    }
    Ok(set)
}
