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
