//! Files from the Hugging Face hub through its local cache (`HF_HOME`, default
//! `~/.cache/huggingface`): a cached file is used without touching the network; otherwise it is
//! downloaded, and a failure says the hub could not be reached and how to proceed.

use super::DataError;
use hf_hub::{api::sync::ApiBuilder, Cache, Repo, RepoType};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
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
    let unreachable =
        |why: String| DataError::Hub { what: what.clone(), cache: cache.path().display().to_string(), why };
    let api = ApiBuilder::from_env().with_progress(false).build().map_err(|e| unreachable(e.to_string()))?;
    api.repo(handle).get(file).map_err(|e| unreachable(e.to_string()))
}

/// The local snapshot folder of dataset repo `repo`, holding at least the files `wanted` accepts
/// (paths relative to the repo root). A cached snapshot with any such file is used as it is;
/// otherwise the repo is listed and those files downloaded.
pub fn snapshot(repo: &str, wanted: impl Fn(&str) -> bool) -> Result<PathBuf, DataError> {
    let handle = Repo::new(repo.to_string(), RepoType::Dataset);
    let cache = Cache::from_env();
    let folder = cache.path().join(handle.folder_name());
    if let Ok(rev) = std::fs::read_to_string(folder.join("refs").join(handle.revision())) {
        let root = folder.join("snapshots").join(rev.trim());
        if any_file(&root, &root, &wanted) {
            return Ok(root);
        }
    }
    let unreachable = |why: String| DataError::Hub {
        what: format!("dataset {repo}"),
        cache: cache.path().display().to_string(),
        why,
    };
    let api = ApiBuilder::from_env().with_progress(false).build().map_err(|e| unreachable(e.to_string()))?;
    let api_repo = api.repo(handle);
    let info = api_repo.info().map_err(|e| unreachable(e.to_string()))?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).filter(|f| wanted(f)).collect();
    let first = files.first().ok_or_else(|| unreachable("the repo holds none of the expected files".into()))?;
    let mut root = None;
    for f in &files {
        let path = api_repo.get(f).map_err(|e| unreachable(e.to_string()))?;
        if f == first {
            root = path.ancestors().nth(f.split('/').count()).map(PathBuf::from);
        }
    }
    root.ok_or_else(|| unreachable("unexpected cache layout".into()))
}

fn any_file(root: &std::path::Path, dir: &std::path::Path, wanted: &impl Fn(&str) -> bool) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            any_file(root, &p, wanted)
        } else {
            p.strip_prefix(root).map(|r| wanted(&r.to_string_lossy())).unwrap_or(false)
        }
    })
}
