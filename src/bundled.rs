//! The bundled default compiled into the binary: the demo model and data (`assets/`) and the
//! demo profile (`profiles/demo.toml`), so that `lors` and `lors train` start anywhere, with
//! no checkout around them. Written out on first use under the user's cache.

use std::path::{Path, PathBuf};

use crate::error::{LorsError, Result};
use crate::io::{cache_dir, write_atomic};

/// The bundled files, by their path under `assets/`: the demo model, its data, and the
/// small task files the demo profile's commented `[eval]` names.
const FILES: [(&str, &[u8]); 12] = [
    (
        "demo-model/config.json",
        include_bytes!("../assets/demo-model/config.json"),
    ),
    (
        "demo-model/model.safetensors",
        include_bytes!("../assets/demo-model/model.safetensors"),
    ),
    (
        "demo-model/tokenizer.json",
        include_bytes!("../assets/demo-model/tokenizer.json"),
    ),
    (
        "demo-data/train.jsonl",
        include_bytes!("../assets/demo-data/train.jsonl"),
    ),
    (
        "demo-data/valid.jsonl",
        include_bytes!("../assets/demo-data/valid.jsonl"),
    ),
    (
        "tasks/arc_challenge.jsonl",
        include_bytes!("../assets/tasks/arc_challenge.jsonl"),
    ),
    (
        "tasks/arc_easy.jsonl",
        include_bytes!("../assets/tasks/arc_easy.jsonl"),
    ),
    (
        "tasks/boolq.jsonl",
        include_bytes!("../assets/tasks/boolq.jsonl"),
    ),
    (
        "tasks/hellaswag.jsonl",
        include_bytes!("../assets/tasks/hellaswag.jsonl"),
    ),
    (
        "tasks/openbookqa.jsonl",
        include_bytes!("../assets/tasks/openbookqa.jsonl"),
    ),
    (
        "tasks/rte.jsonl",
        include_bytes!("../assets/tasks/rte.jsonl"),
    ),
    (
        "tasks/winogrande.jsonl",
        include_bytes!("../assets/tasks/winogrande.jsonl"),
    ),
];

/// `profiles/demo.toml`, whose paths are relative to the repository (`"assets/…"`).
const PROFILE: &str = include_str!("../profiles/demo.toml");

/// The bundled default as written out: its assets folder and its profile.
#[derive(Debug, Clone)]
pub struct Bundled {
    pub assets: PathBuf,
    pub profile: PathBuf,
}

/// Where the bundled default goes unless told otherwise: `<cache>/bundled/<version>`.
pub fn default_dir() -> PathBuf {
    cache_dir().join("bundled").join(env!("CARGO_PKG_VERSION"))
}

/// Write the bundled default under `dir` (`assets/` and `demo.toml`, its paths pointing
/// there): each file that is missing or differs (damaged, or from another build) is written
/// atomically, so processes starting at once never see a partial or missing file.
pub fn write_out(dir: &Path) -> Result<Bundled> {
    let bundled = Bundled {
        assets: dir.join("assets"),
        profile: dir.join("demo.toml"),
    };
    let profile = profile_text(&bundled.assets);
    let files = FILES
        .iter()
        .map(|&(name, bytes)| (bundled.assets.join(name), bytes))
        .chain([(bundled.profile.clone(), profile.as_bytes())]);
    for (path, bytes) in files {
        if std::fs::read(&path).is_ok_and(|b| b == bytes) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| LorsError::io(parent, e))?;
        }
        write_atomic(&path, bytes)?;
    }
    Ok(bundled)
}

/// The demo profile with its `"assets/…"` strings made absolute under `assets`.
fn profile_text(assets: &Path) -> String {
    let mut text = PROFILE.to_string();
    for (name, _) in FILES {
        let folder = name.split('/').next().expect("a path");
        for rel in [name, folder] {
            let quoted = toml::Value::String(assets.join(rel).display().to_string()).to_string();
            text = text.replace(&format!("\"assets/{rel}\""), &quoted);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Profile;

    /// The written profile loads and names only files of the written assets, which hold the
    /// bundled bytes; a damaged copy is rebuilt, an intact one left alone.
    #[test]
    fn the_written_default_is_complete_and_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bundled");
        let b = write_out(&dir).unwrap();
        let p = Profile::load(&b.profile, &[]).unwrap();
        assert_eq!(p.model.path, b.assets.join("demo-model"));
        assert_eq!(p.data.train, b.assets.join("demo-data/train.jsonl"));
        assert_eq!(
            p.data.valid.as_deref(),
            Some(b.assets.join("demo-data/valid.jsonl").as_path())
        );
        for (name, bytes) in FILES {
            assert_eq!(std::fs::read(b.assets.join(name)).unwrap(), bytes, "{name}");
        }
        assert!(!std::fs::read_to_string(&b.profile)
            .unwrap()
            .contains("\"assets/"));
        let model = b.assets.join("demo-model/model.safetensors");
        let written = std::fs::metadata(&model).unwrap().modified().unwrap();
        write_out(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&model).unwrap().modified().unwrap(),
            written
        );
        std::fs::write(&model, b"damaged").unwrap();
        write_out(&dir).unwrap();
        assert_eq!(std::fs::read(&model).unwrap(), FILES[1].1);
    }
}
