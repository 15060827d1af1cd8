//! The words a figure needs to be read on its own: which hook, which metric,
//! which model (figure subtitles and the report's header).

use attrpatch_core::hooks::HookKind;
use attrpatch_core::job::Manifest;
use std::path::Path;

/// What the hook tensors are, in words.
pub fn hook_label(kind: &HookKind) -> String {
    match kind {
        HookKind::AttnOut => "attention out-projection input".into(),
        HookKind::Resid => "residual stream (block outputs)".into(),
        HookKind::Mlp => "MLP outputs".into(),
        HookKind::Tensors(pattern) => format!("tensors matching /{pattern}/"),
    }
}

/// The model file with its folder, e.g. "ioi-gpt2/model.onnx": the folder
/// usually names the model, the full path is in results.json.
pub fn model_label(model: &str) -> String {
    let p = Path::new(model);
    let file = p.file_name().map_or_else(|| model.to_string(), |f| f.to_string_lossy().into_owned());
    match p.parent().and_then(|d| d.file_name()) {
        Some(dir) => format!("{}/{file}", dir.to_string_lossy()),
        None => file,
    }
}

/// "hook: ... · metric: normalised ... · model: ... · N prompt pairs".
pub fn subtitle(m: &Manifest) -> String {
    let pairs = m.prompts.len();
    format!(
        "hook: {} · metric: normalised {} · model: {} · {pairs} prompt pair{}",
        hook_label(&m.hooks_kind),
        m.metric.label(),
        model_label(&m.model),
        if pairs == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_hook_and_the_model() {
        assert_eq!(model_label("models/ioi-gpt2/model.onnx"), "ioi-gpt2/model.onnx");
        assert_eq!(model_label("model.onnx"), "model.onnx");
        assert!(hook_label(&HookKind::Resid).contains("residual"));
        assert!(hook_label(&HookKind::Tensors(".*ln_1.*".into())).contains("/.*ln_1.*/"));
    }
}
