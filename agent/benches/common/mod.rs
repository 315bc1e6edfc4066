//! What every benchmark of this crate needs: where results go, what machine ran them, medians.

use std::path::{Path, PathBuf};

/// The workspace's target directory (honouring `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target"),
    }
}

/// Writes a results document to `<target>/autodidact-bench/<file>` and says where.
pub fn write_results(file: &str, doc: &serde_json::Value) {
    let dir = target_dir().join("autodidact-bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let path = dir.join(file);
    std::fs::write(&path, serde_json::to_string_pretty(doc).expect("json")).expect("write");
    println!("wrote {}", path.display());
}

/// The CPU model, from /proc/cpuinfo.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Median (NaN for no samples).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}
