//! `reflections`: the agent's log of what it noticed and decided, one readable line each.

use std::collections::VecDeque;
use std::io::Write;
use std::ops::ControlFlow;

use autodidact_replay::{Inspector, Reflection};

use super::format_time;

/// Options of `reflections`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReflectionsArgs {
    /// Only this kind (e.g. `promotion`, `drift`, `lessons`).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only reflections about this model version.
    #[arg(long)]
    pub model: Option<i64>,
    /// Only the newest N.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also print each reflection's structured data.
    #[arg(long)]
    pub data: bool,
    /// JSON lines: one object per reflection.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn run(ins: &Inspector, a: &ReflectionsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if ins.schema_version() < 2 {
        writeln!(out, "this file is schema v1, which has no reflections")?;
        return Ok(());
    }
    let view = ins.view()?;
    // Oldest first reads as a story; a ring buffer keeps "the newest N" in bounded memory.
    let cap = a.limit.unwrap_or(usize::MAX);
    let mut kept: VecDeque<Reflection> = VecDeque::new();
    let mut io_err = None;
    view.for_each_reflection(a.kind.as_deref(), |r| {
        if a.model.is_some() && r.model_version != a.model {
            return Ok(ControlFlow::Continue(()));
        }
        if a.limit.is_none() {
            // Unlimited: print as we go, nothing held.
            if let Err(e) = print(r, a, out) {
                io_err = Some(e);
                return Ok(ControlFlow::Break(()));
            }
        } else if cap > 0 {
            if kept.len() == cap {
                kept.pop_front();
            }
            kept.push_back(r.clone());
        }
        Ok(ControlFlow::Continue(()))
    })?;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    for r in &kept {
        print(r, a, out)?;
    }
    Ok(())
}

fn print(r: &Reflection, a: &ReflectionsArgs, out: &mut dyn Write) -> std::io::Result<()> {
    if a.json {
        let v = serde_json::json!({
            "id": r.id,
            "created_at": r.created_at,
            "kind": r.kind,
            "model_version": r.model_version,
            "sentence": r.sentence,
            "data": r.data,
        });
        return writeln!(out, "{v}");
    }
    let model = r.model_version.map_or(String::new(), |v| format!(" v{v}"));
    writeln!(
        out,
        "#{} {} [{}{model}] {}",
        r.id,
        format_time(r.created_at),
        r.kind,
        r.sentence
    )?;
    if a.data {
        writeln!(out, "    {}", r.data)?;
    }
    Ok(())
}
