//! Files from the Hugging Face hub through its local cache (`HF_HOME`, default
//! `~/.cache/huggingface`): a cached file is used without touching the network; otherwise it is
//! downloaded, and a failure says the hub could not be reached and how to proceed.
//!
//! Offline mode follows `huggingface_hub` (its `constants.py`): `HF_HUB_OFFLINE`, or when that is
//! unset or empty `TRANSFORMERS_OFFLINE`, set to 1, ON, YES or TRUE (any case) means the cache
//! only: a file missing from it is an error naming the variable, and no request is made.

use super::DataError;
use hf_hub::{api::sync::ApiBuilder, Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

/// The variable that puts the hub in offline mode, if one does (huggingface_hub's rule:
/// `_is_true(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)`).
pub fn offline() -> Option<&'static str> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (var, value) = match get("HF_HUB_OFFLINE") {
        Some(v) => ("HF_HUB_OFFLINE", v),
        None => ("TRANSFORMERS_OFFLINE", get("TRANSFORMERS_OFFLINE")?),
    };
    ["1", "ON", "YES", "TRUE"].contains(&value.to_uppercase().as_str()).then_some(var)
}

/// Up to five names of `files`, for messages.
pub fn sample(files: &[String]) -> String {
    let mut s = files.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if files.len() > 5 {
        s.push_str(", ...");
    }
    s
}

/// Local path of `file` in hub repo `repo` ("ORG/NAME").
pub fn fetch(repo: &str, kind: RepoKind, file: &str) -> Result<PathBuf, DataError> {
    let repo_type = match kind {
        RepoKind::Model => RepoType::Model,
        RepoKind::Dataset => RepoType::Dataset,
    };
    let handle = Repo::new(repo.to_string(), repo_type);
    let cache = Cache::from_env();
    if let Some(path) = cache.repo(handle.clone()).get(file) {
        return Ok(path);
    }
    let what = format!("{}{repo}/{file}", if kind == RepoKind::Dataset { "dataset " } else { "" });
    let shown = cache.path().display().to_string();
    if let Some(var) = offline() {
        return Err(DataError::HubOffline { what, cache: shown, var });
    }
    let unreachable = |why: String| DataError::Hub { what: what.clone(), cache: shown.clone(), why };
    let api = ApiBuilder::from_env().with_progress(false).build().map_err(|e| unreachable(e.to_string()))?;
    api.repo(handle).get(file).map_err(|e| unreachable(e.to_string()))
}

/// The local snapshot folder of dataset repo `repo`, holding at least the files `wanted` accepts
/// (paths relative to the repo root). A cached snapshot with any such file is used as it is;
/// otherwise the repo is listed and those files downloaded (offline: an error). A repo, or an
/// offline cached snapshot, without any such file is [`DataError::HubNoFiles`] with its files.
pub fn snapshot(repo: &str, wanted: impl Fn(&str) -> bool) -> Result<PathBuf, DataError> {
    let handle = Repo::new(repo.to_string(), RepoType::Dataset);
    let cache = Cache::from_env();
    let folder = cache.path().join(handle.folder_name());
    let mut cached = None;
    if let Ok(rev) = std::fs::read_to_string(folder.join("refs").join(handle.revision())) {
        let root = folder.join("snapshots").join(rev.trim());
        let mut files = Vec::new();
        list(&root, &root, &mut files);
        if files.iter().any(|f| wanted(f)) {
            return Ok(root);
        }
        if !files.is_empty() {
            cached = Some((root, files));
        }
    }
    let shown = cache.path().display().to_string();
    if let Some(var) = offline() {
        return Err(match cached {
            Some((root, files)) => DataError::HubNoFiles { repo: repo.into(), files, root: Some(root) },
            None => DataError::HubOffline { what: format!("dataset {repo}"), cache: shown, var },
        });
    }
    let unreachable = |why: String| DataError::Hub { what: format!("dataset {repo}"), cache: shown.clone(), why };
    let api = ApiBuilder::from_env().with_progress(false).build().map_err(|e| unreachable(e.to_string()))?;
    let api_repo = api.repo(handle);
    let info = api_repo.info().map_err(|e| unreachable(e.to_string()))?;
    let all: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let files: Vec<String> = all.iter().filter(|f| wanted(f)).cloned().collect();
    let Some(first) = files.first() else {
        return Err(DataError::HubNoFiles { repo: repo.into(), files: all, root: cached.map(|c| c.0) });
    };
    let mut root = None;
    for f in &files {
        let path = api_repo.get(f).map_err(|e| unreachable(e.to_string()))?;
        if f == first {
            root = path.ancestors().nth(f.split('/').count()).map(PathBuf::from);
        }
    }
    root.ok_or_else(|| unreachable("unexpected cache layout".into()))
}

/// Every file under `dir`, as paths relative to `root` (sorted, `/`-separated).
fn list(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            list(root, &p, out);
        } else if let Ok(r) = p.strip_prefix(root) {
            out.push(r.to_string_lossy().replace('\\', "/"));
        }
    }
}
