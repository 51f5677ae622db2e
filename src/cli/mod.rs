//! Subcommands of the `lors` binary.

pub mod bench;
pub mod data;
pub mod eval;
pub mod model;
pub mod prune;
pub mod report;
pub mod source;
pub mod sweep;
pub mod train;

/// The bundled default written out under the user's cache (what `lors` and `lors train`
/// start from without a profile).
pub fn bundled_default() -> anyhow::Result<lors::bundled::Bundled> {
    use anyhow::Context;
    let dir = lors::bundled::default_dir();
    lors::bundled::write_out(&dir)
        .with_context(|| format!("cannot write the bundled default to {}", dir.display()))
}

/// Tensor counts by type as `48 F32, 2 F16`, for the GGUF commands' summaries.
pub fn type_counts(types: &std::collections::BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    parts.join(", ")
}
