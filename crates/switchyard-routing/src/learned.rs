//! Learned routers: a predictor of each candidate model's quality on a query
//! (KNN or MLP over the query's embedding), the decision rule that trades
//! predicted quality against cost, and the artifact directory they live in.
//!
//! An artifact is a directory holding `manifest.json` (format version, kind,
//! embedder id, candidate models and their mean costs, training-data hash,
//! parameters, metrics) and the predictor's data: `knn.safetensors` (training
//! embeddings and scores; the HNSW index is rebuilt on load) or
//! `mlp.safetensors` (weights).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::knn::{KnnIndex, KnnParams};
use crate::mlp::{Mlp, MlpParams};

/// The artifact format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Which predictor an artifact holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PredictorKind {
    /// [`KnnIndex`].
    Knn,
    /// [`Mlp`].
    Mlp,
}

/// `manifest.json` of a router artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The predictor.
    pub kind: PredictorKind,
    /// Id of the embedder the router was trained with ([`crate::embed::Embedder::id`]).
    pub embedder: String,
    /// Embedding width.
    pub dims: usize,
    /// Candidate model names, in prediction order.
    pub models: Vec<String>,
    /// Each candidate's mean cost per query in the training data.
    pub mean_costs: Vec<f64>,
    /// SHA-256 of the training data file.
    pub data_hash: String,
    /// KNN parameters (KNN routers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn: Option<KnnParams>,
    /// MLP parameters (MLP routers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp: Option<MlpParams>,
    /// Validation metrics recorded at training time.
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// SHA-256 of the data file beside the manifest, set by
    /// [`LearnedRouter::save`]: a load that finds other data (the next
    /// version, half published) is refused rather than served under this
    /// manifest. Older artifacts have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_file_sha256: Option<String>,
}

/// Why an artifact could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The manifest or data is inconsistent.
    #[error("invalid router artifact: {0}")]
    Invalid(String),
    /// The data file is not the one its manifest was written with: most
    /// likely a new version is being published (its files land one by one),
    /// so a later read may find it whole.
    #[error("router artifact being published: {0}")]
    Unpublished(String),
    /// A tensor operation failed.
    #[error("router tensors: {0}")]
    Tensor(#[from] candle_core::Error),
}

fn io(path: &Path, e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The predictor of a loaded router.
#[derive(Debug)]
pub enum Predictor {
    /// Neighbours' scores.
    Knn(KnnIndex),
    /// A trained network.
    Mlp(Mlp),
}

/// A router: manifest plus predictor.
#[derive(Debug)]
pub struct LearnedRouter {
    /// What the router is.
    pub manifest: Manifest,
    /// How it predicts.
    pub predictor: Predictor,
}

/// How predicted quality is traded against cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// `argmax(score − λ · cost / max cost)`: λ = 0 buys the best predicted
    /// quality, larger λ saves money.
    Tradeoff {
        /// λ.
        lambda: f64,
    },
    /// The cheapest candidate whose predicted score reaches `min_score`, else
    /// the best predicted.
    Threshold {
        /// The score a candidate needs.
        min_score: f64,
    },
}

/// Picks a candidate: `scores[j]` and `costs[j]` of model `j`, considering
/// only models with `allowed[j]`. `None` when nothing is allowed.
pub fn decide(scores: &[f32], costs: &[f64], allowed: &[bool], objective: Objective) -> Option<usize> {
    let ok = |j: &usize| allowed.get(*j).copied().unwrap_or(false);
    let n = scores.len().min(costs.len());
    let score = |j: usize| finite(scores[j]);
    // Costs are scaled by the dearest of all candidates, allowed or not, so
    // that λ means the same whichever are available now (and in `eval`).
    let max_cost = costs[..n].iter().copied().fold(0.0f64, f64::max);
    let norm = |j: usize| if max_cost > 0.0 { costs[j] / max_cost } else { 0.0 };
    let best_by = |key: &dyn Fn(usize) -> f64| {
        (0..n).filter(ok).max_by(|&a, &b| {
            key(a)
                .total_cmp(&key(b))
                // Ties go to the cheaper model.
                .then_with(|| costs[b].total_cmp(&costs[a]))
        })
    };
    match objective {
        Objective::Tradeoff { lambda } => best_by(&|j| score(j) - lambda * norm(j)),
        Objective::Threshold { min_score } => (0..n)
            .filter(ok)
            .filter(|&j| score(j) >= min_score)
            // Equally cheap: the better predicted score.
            .min_by(|&a, &b| {
                costs[a]
                    .total_cmp(&costs[b])
                    .then_with(|| score(b).total_cmp(&score(a)))
            })
            .or_else(|| best_by(&score)),
    }
}

/// A predicted score as a number to compare: one that is not finite (an
/// artifact whose arithmetic overflowed) is the worst, never the best.
fn finite(score: f32) -> f64 {
    let score = f64::from(score);
    if score.is_finite() { score } else { f64::NEG_INFINITY }
}

/// Every allowed candidate, best first: [`decide`]'s choice, then the others
/// by `score − λ · cost / max cost` (for [`Objective::Threshold`], the
/// others reaching `min_score` cheapest first, then the rest by score), so a
/// caller can fall back down the list.
pub fn rank(scores: &[f32], costs: &[f64], allowed: &[bool], objective: Objective) -> Vec<usize> {
    let Some(first) = decide(scores, costs, allowed, objective) else {
        return Vec::new();
    };
    let n = scores.len().min(costs.len());
    let ok = |j: usize| allowed.get(j).copied().unwrap_or(false);
    let max_cost = costs[..n].iter().copied().fold(0.0f64, f64::max);
    let (lambda, min_score) = match objective {
        Objective::Tradeoff { lambda } => (lambda, None),
        Objective::Threshold { min_score } => (0.0, Some(min_score)),
    };
    let value = |j: usize| {
        let norm = if max_cost > 0.0 { costs[j] / max_cost } else { 0.0 };
        finite(scores[j]) - lambda * norm
    };
    let passes = |j: usize| min_score.is_some_and(|min| finite(scores[j]) >= min);
    let mut rest: Vec<usize> = (0..n).filter(|&j| ok(j) && j != first).collect();
    rest.sort_by(|&a, &b| match (passes(a), passes(b)) {
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (true, true) => costs[a]
            .total_cmp(&costs[b])
            .then_with(|| value(b).total_cmp(&value(a))),
        (false, false) => value(b)
            .total_cmp(&value(a))
            .then_with(|| costs[a].total_cmp(&costs[b])),
    });
    std::iter::once(first).chain(rest).collect()
}

/// Writes `path` through a temporary file and a rename, so a
/// reader sees the old file or the new one, never half of one.
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<(), ArtifactError>) -> Result<(), ArtifactError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    write(&tmp)?;
    crate::embed::readable_by_all(&tmp).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// The largest router data file read (2 GiB): a KNN index is held in memory.
pub const MAX_DATA_BYTES: u64 = 2 << 30;

/// The data file of a `kind` of router, beside its manifest.
fn data_file(kind: PredictorKind) -> &'static str {
    match kind {
        PredictorKind::Knn => "knn.safetensors",
        PredictorKind::Mlp => "mlp.safetensors",
    }
}

/// The largest manifest read (1 MiB; a real one is a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Refuses manifest settings that would make loading or routing take
/// unbounded memory (an `ef_search` in the billions allocates that much per
/// query; a huge `hidden` allocates its weights before the file is read),
/// and candidate names given twice.
fn check_bounds(manifest: &Manifest) -> Result<(), ArtifactError> {
    let over = |what: &str, value: usize, max: usize| {
        (value > max).then(|| ArtifactError::Invalid(format!("{what} is {value}; at most {max} is accepted")))
    };
    let mut problems = vec![
        over("dims", manifest.dims, 16_384),
        (manifest.dims == 0).then(|| ArtifactError::Invalid("dims must be at least 1".into())),
        over("the number of models", manifest.models.len(), 1_024),
    ];
    if let Some(knn) = &manifest.knn {
        problems.push(over("knn.k", knn.k, 1_000));
        // Bounds a build (run at each load) and a search (on each request)
        // to seconds and milliseconds: the index is rebuilt while polling
        // waits for it.
        problems.push(over("knn.ef_search", knn.ef_search, 10_000));
        problems.push(over("knn.ef_construction", knn.ef_construction, 2_000));
        problems.push(over("knn.max_connections", knn.max_connections, 256));
    }
    if let Some(mlp) = &manifest.mlp {
        problems.push(over("mlp.hidden", mlp.hidden, 65_536));
        problems.push(over(
            "mlp weights (dims × hidden)",
            manifest.dims.saturating_mul(mlp.hidden),
            64 << 20,
        ));
    }
    if let Some(problem) = problems.into_iter().flatten().next() {
        return Err(problem);
    }
    let mut names: Vec<&String> = manifest.models.iter().collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(ArtifactError::Invalid(format!("model `{}` is listed twice", pair[0])));
    }
    Ok(())
}

impl LearnedRouter {
    /// Predicted score of each candidate model for one query embedding.
    pub fn predict(&self, embedding: &[f32]) -> Result<Vec<f32>, ArtifactError> {
        if embedding.len() != self.manifest.dims {
            return Err(ArtifactError::Invalid(format!(
                "embedding has {} dimensions, the router expects {}",
                embedding.len(),
                self.manifest.dims
            )));
        }
        Ok(match &self.predictor {
            Predictor::Knn(index) => index.predict(embedding),
            Predictor::Mlp(mlp) => mlp.predict(embedding)?,
        })
    }

    /// Writes the artifact into `dir` (created if missing). The manifest is
    /// written last, so a watcher never sees a manifest without its data.
    ///
    /// What [`LearnedRouter::load`] would refuse is refused here, before
    /// anything is written, so a directory that serves is never replaced by
    /// one that cannot.
    pub fn save(&self, dir: &Path) -> Result<(), ArtifactError> {
        check_manifest(&self.manifest)?;
        let m = &self.manifest;
        let bytes = match &self.predictor {
            Predictor::Knn(index) if m.kind == PredictorKind::Knn => {
                let (embeddings, scores) = index.data();
                check_knn_data(m, embeddings, scores)?;
                4 * (embeddings.len() as u64) * (m.dims + m.models.len()) as u64
            }
            Predictor::Mlp(mlp) if m.kind == PredictorKind::Mlp => {
                check_mlp(mlp)?;
                let hidden = m.mlp.unwrap_or_default().hidden;
                if (mlp.dims(), mlp.hidden(), mlp.models()) != (m.dims, hidden, m.models.len()) {
                    return Err(ArtifactError::Invalid(format!(
                        "the network is {}×{}×{}; the manifest says {}×{hidden}×{}",
                        mlp.dims(),
                        mlp.hidden(),
                        mlp.models(),
                        m.dims,
                        m.models.len()
                    )));
                }
                mlp.weight_bytes()
            }
            _ => {
                return Err(ArtifactError::Invalid(
                    "the manifest's kind is not its predictor's".into(),
                ));
            }
        };
        if bytes > MAX_DATA_BYTES {
            return Err(ArtifactError::Invalid(format!(
                "the data would be about {bytes} bytes, more than the {MAX_DATA_BYTES} a router may hold"
            )));
        }
        self.write(dir)
    }

    /// Writes the files, data first, unchecked.
    fn write(&self, dir: &Path) -> Result<(), ArtifactError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        match &self.predictor {
            Predictor::Knn(index) => {
                let (embeddings, scores) = index.data();
                let rows = |m: &[Vec<f32>]| {
                    let width = m.first().map_or(0, Vec::len);
                    let flat: Vec<f32> = m.iter().flatten().copied().collect();
                    Tensor::from_vec(flat, (m.len(), width), &Device::Cpu)
                };
                let tensors = HashMap::from([
                    ("embeddings".to_owned(), rows(embeddings)?),
                    ("scores".to_owned(), rows(scores)?),
                ]);
                write_atomic(&dir.join("knn.safetensors"), |tmp| {
                    Ok(candle_core::safetensors::save(&tensors, tmp)?)
                })?;
            }
            Predictor::Mlp(mlp) => write_atomic(&dir.join("mlp.safetensors"), |tmp| Ok(mlp.save(tmp)?))?,
        }
        let data = dir.join(data_file(self.manifest.kind));
        let written = std::fs::read(&data).map_err(|e| io(&data, e))?;
        let manifest = Manifest {
            data_file_sha256: Some(format!("{:x}", Sha256::digest(&written))),
            ..self.manifest.clone()
        };
        let manifest = serde_json::to_vec_pretty(&manifest).map_err(|e| ArtifactError::Invalid(e.to_string()))?;
        write_atomic(&dir.join("manifest.json"), |tmp| {
            std::fs::write(tmp, manifest).map_err(|e| io(tmp, e))
        })
    }

    /// Reads and checks an artifact directory.
    pub fn load(dir: &Path) -> Result<Self, ArtifactError> {
        let path = dir.join("manifest.json");
        let size = std::fs::metadata(&path).map_err(|e| io(&path, e))?.len();
        if size > MAX_MANIFEST_BYTES {
            return Err(ArtifactError::Invalid(format!(
                "{} is {size} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may hold",
                path.display()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
        let manifest = parse_manifest(&bytes, &path.display().to_string())?;
        let data = dir.join(data_file(manifest.kind));
        let size = std::fs::metadata(&data).map_err(|e| io(&data, e))?.len();
        if size > MAX_DATA_BYTES {
            return Err(ArtifactError::Invalid(format!(
                "{} is {size} bytes, more than the {MAX_DATA_BYTES} a router may hold",
                data.display()
            )));
        }
        let bytes = std::fs::read(&data).map_err(|e| io(&data, e))?;
        Self::from_parts(manifest, bytes, &data.display().to_string())
    }

    /// An artifact from the bytes of its manifest and of its data file (as
    /// read from an object store), checked as [`LearnedRouter::load`] checks
    /// a directory.
    pub fn from_bytes(manifest: &[u8], data: Vec<u8>) -> Result<Self, ArtifactError> {
        if manifest.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ArtifactError::Invalid(format!(
                "manifest.json is {} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may hold",
                manifest.len()
            )));
        }
        let manifest = parse_manifest(manifest, "manifest.json")?;
        if data.len() as u64 > MAX_DATA_BYTES {
            return Err(ArtifactError::Invalid(format!(
                "{} is {} bytes, more than the {MAX_DATA_BYTES} a router may hold",
                data_file(manifest.kind),
                data.len()
            )));
        }
        let name = data_file(manifest.kind);
        Self::from_parts(manifest, data, name)
    }

    /// The router of a checked manifest and its data file's bytes (`name`
    /// names the file in errors).
    fn from_parts(manifest: Manifest, bytes: Vec<u8>, name: &str) -> Result<Self, ArtifactError> {
        let m = manifest.models.len();
        // The bytes checked against the manifest are the bytes parsed: a
        // file replaced between two reads cannot slip in.
        if let Some(expected) = &manifest.data_file_sha256
            && &format!("{:x}", Sha256::digest(&bytes)) != expected
        {
            return Err(ArtifactError::Unpublished(format!(
                "{name} is not the data its manifest was written with"
            )));
        }
        let predictor = match manifest.kind {
            PredictorKind::Knn => {
                let (embeddings, scores) = {
                    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
                    drop(bytes);
                    let get = |name: &str| {
                        tensors
                            .get(name)
                            .ok_or_else(|| ArtifactError::Invalid(format!("knn.safetensors lacks `{name}`")))
                    };
                    (get("embeddings")?.to_vec2::<f32>()?, get("scores")?.to_vec2::<f32>()?)
                };
                check_knn_data(&manifest, &embeddings, &scores)?;
                Predictor::Knn(KnnIndex::build(embeddings, scores, manifest.knn.unwrap_or_default()))
            }
            PredictorKind::Mlp => {
                let hidden = manifest.mlp.unwrap_or_default().hidden;
                let mlp = Mlp::from_buffer(&bytes, manifest.dims, hidden, m)?;
                check_mlp(&mlp)?;
                Predictor::Mlp(mlp)
            }
        };
        Ok(Self { manifest, predictor })
    }
}

/// A manifest's bytes, parsed and checked (`name` names the file in errors).
fn parse_manifest(bytes: &[u8], name: &str) -> Result<Manifest, ArtifactError> {
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| ArtifactError::Invalid(format!("{name} is not a valid manifest: {e}")))?;
    check_manifest(&manifest)?;
    Ok(manifest)
}

/// What a manifest must hold, whatever its data.
fn check_manifest(manifest: &Manifest) -> Result<(), ArtifactError> {
    if manifest.format_version != FORMAT_VERSION {
        return Err(ArtifactError::Invalid(format!(
            "format version {} (this build reads {FORMAT_VERSION})",
            manifest.format_version
        )));
    }
    let m = manifest.models.len();
    if m == 0 || manifest.mean_costs.len() != m {
        return Err(ArtifactError::Invalid(
            "models and mean_costs must be non-empty and equally long".into(),
        ));
    }
    if manifest.mean_costs.iter().any(|c| !c.is_finite() || *c < 0.0) {
        return Err(ArtifactError::Invalid(
            "mean_costs must be finite and not negative".into(),
        ));
    }
    if manifest.knn.as_ref().is_some_and(|k| k.k == 0) {
        return Err(ArtifactError::Invalid("knn.k must be at least 1".into()));
    }
    check_bounds(manifest)
}

/// A KNN router's stored queries: as many score rows as embeddings, of the
/// manifest's widths, all finite.
fn check_knn_data(manifest: &Manifest, embeddings: &[Vec<f32>], scores: &[Vec<f32>]) -> Result<(), ArtifactError> {
    if embeddings.is_empty()
        || embeddings.len() != scores.len()
        || embeddings.iter().any(|e| e.len() != manifest.dims)
        || scores.iter().any(|s| s.len() != manifest.models.len())
    {
        return Err(ArtifactError::Invalid(
            "knn.safetensors does not match the manifest (or holds no query)".into(),
        ));
    }
    if embeddings.iter().chain(scores).flatten().any(|v| !v.is_finite()) {
        return Err(ArtifactError::Invalid(
            "knn.safetensors holds a value that is not a finite number".into(),
        ));
    }
    Ok(())
}

/// An MLP's weights must all be finite (a diverged training run is not a router).
fn check_mlp(mlp: &Mlp) -> Result<(), ArtifactError> {
    if mlp.is_finite()? {
        Ok(())
    } else {
        Err(ArtifactError::Invalid(
            "mlp.safetensors holds a weight that is not a finite number".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(kind: PredictorKind) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            kind,
            embedder: "test".into(),
            dims: 4,
            models: vec!["a".into(), "b".into()],
            mean_costs: vec![1.0, 0.1],
            data_hash: "0".repeat(64),
            knn: Some(KnnParams {
                k: 2,
                ..KnnParams::default()
            }),
            mlp: Some(MlpParams {
                hidden: 8,
                max_epochs: 3,
                ..MlpParams::default()
            }),
            metrics: serde_json::Value::Null,
            data_file_sha256: None,
        }
    }

    #[test]
    fn artifacts_round_trip_and_bad_ones_are_rejected() {
        let x: Vec<Vec<f32>> = (0..8)
            .map(|i| {
                let mut v = vec![0.0; 4];
                v[i % 4] = 1.0;
                v
            })
            .collect();
        let y: Vec<Vec<f32>> = (0..8).map(|i| vec![1.0, if i % 2 == 0 { 1.0 } else { 0.0 }]).collect();
        let knn = LearnedRouter {
            manifest: manifest(PredictorKind::Knn),
            predictor: Predictor::Knn(KnnIndex::build(
                x.clone(),
                y.clone(),
                KnnParams {
                    k: 2,
                    ..KnnParams::default()
                },
            )),
        };
        let all: Vec<usize> = (0..8).collect();
        let (mlp, _) = Mlp::train(&x, &y, &all, &[], &manifest(PredictorKind::Mlp).mlp.unwrap_or_default()).unwrap();
        let mlp = LearnedRouter {
            manifest: manifest(PredictorKind::Mlp),
            predictor: Predictor::Mlp(mlp),
        };
        for router in [knn, mlp] {
            let dir = tempfile::tempdir().unwrap();
            router.save(dir.path()).unwrap();
            let loaded = LearnedRouter::load(dir.path()).unwrap();
            assert!(
                loaded.manifest.data_file_sha256.is_some(),
                "the manifest names its data"
            );
            assert_eq!(
                Manifest {
                    data_file_sha256: None,
                    ..loaded.manifest.clone()
                },
                router.manifest
            );
            // Data that is not what the manifest was written with (the next
            // version's, half published) is refused.
            let data = dir.path().join(data_file(router.manifest.kind));
            let mut bytes = std::fs::read(&data).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            let original = std::fs::read(&data).unwrap();
            std::fs::write(&data, &bytes).unwrap();
            let err = LearnedRouter::load(dir.path()).unwrap_err();
            assert!(
                matches!(&err, ArtifactError::Unpublished(m) if m.contains("not the data its manifest was written with")),
                "{err}"
            );
            // From the bytes (as fetched from S3): the same router, and the
            // same refusal of data that is not the manifest's.
            let manifest_bytes = std::fs::read(dir.path().join("manifest.json")).unwrap();
            assert!(matches!(
                LearnedRouter::from_bytes(&manifest_bytes, bytes),
                Err(ArtifactError::Unpublished(_))
            ));
            let fetched = LearnedRouter::from_bytes(&manifest_bytes, original.clone()).unwrap();
            std::fs::write(&data, original).unwrap();
            for e in &x {
                assert_eq!(loaded.predict(e).unwrap(), router.predict(e).unwrap());
                assert_eq!(fetched.predict(e).unwrap(), router.predict(e).unwrap());
            }
            assert!(loaded.predict(&[1.0, 0.0]).is_err(), "wrong width");
            let text = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
            std::fs::write(
                dir.path().join("manifest.json"),
                text.replace("\"format_version\": 1", "\"format_version\": 99"),
            )
            .unwrap();
            assert!(
                LearnedRouter::load(dir.path())
                    .unwrap_err()
                    .to_string()
                    .contains("format version 99")
            );
            // A manifest past its bound is refused before it is read.
            let padded = text.replacen('{', &format!("{{\"padding\": \"{}\",", "x".repeat(1 << 20)), 1);
            std::fs::write(dir.path().join("manifest.json"), padded).unwrap();
            let err = LearnedRouter::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains("a manifest may hold"), "{err}");
        }
    }

    #[test]
    fn artifacts_with_values_that_cannot_predict_are_rejected() {
        let x: Vec<Vec<f32>> = (0..4)
            .map(|i| {
                let mut v = vec![0.0; 4];
                v[i] = 1.0;
                v
            })
            .collect();
        let knn = |y: Vec<Vec<f32>>, edit: &dyn Fn(&mut Manifest)| {
            let mut manifest = manifest(PredictorKind::Knn);
            edit(&mut manifest);
            let router = LearnedRouter {
                predictor: Predictor::Knn(KnnIndex::build(x.clone(), y, manifest.knn.unwrap_or_default())),
                manifest,
            };
            let dir = tempfile::tempdir().unwrap();
            let saved = router.save(dir.path()).map_err(|e| e.to_string());
            if saved.is_err() {
                assert!(
                    std::fs::read_dir(dir.path()).unwrap().next().is_none(),
                    "nothing is written when save refuses"
                );
            }
            // What `save` refuses, `load` refuses in files written otherwise.
            router.write(dir.path()).unwrap();
            // Readable by a gateway running as another user.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(dir.path().join("knn.safetensors"))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o644);
            }
            let loaded = LearnedRouter::load(dir.path()).map(|_| ()).map_err(|e| e.to_string());
            assert_eq!(saved, loaded);
            loaded
        };
        let good = vec![vec![1.0, 0.0]; 4];
        assert_eq!(knn(good.clone(), &|_| {}), Ok(()));
        let mut nan = good.clone();
        nan[2][1] = f32::NAN;
        assert!(knn(nan, &|_| {}).unwrap_err().contains("finite"));
        assert!(
            knn(good.clone(), &|m| m.mean_costs[0] = -1.0)
                .unwrap_err()
                .contains("mean_costs")
        );
        assert!(
            knn(good.clone(), &|m| {
                if let Some(k) = m.knn.as_mut() {
                    k.k = 0;
                }
            })
            .unwrap_err()
            .contains("knn.k")
        );
        // Settings that would take unbounded memory at load or per query.
        assert!(
            knn(good.clone(), &|m| {
                if let Some(k) = m.knn.as_mut() {
                    k.ef_search = 100_000_000_000;
                }
            })
            .unwrap_err()
            .contains("knn.ef_search")
        );
        assert!(
            knn(good.clone(), &|m| {
                if let Some(mlp) = m.mlp.as_mut() {
                    mlp.hidden = 1_000_000_000;
                }
            })
            .unwrap_err()
            .contains("mlp.hidden")
        );
        assert!(
            knn(good.clone(), &|m| m.models[1] = "a".into())
                .unwrap_err()
                .contains("listed twice")
        );
        assert!(
            knn(good.clone(), &|m| {
                if let Some(k) = m.knn.as_mut() {
                    k.k = 2_000;
                }
            })
            .unwrap_err()
            .contains("knn.k is 2000")
        );
        assert!(
            knn(vec![vec![1.0]; 4], &|_| {})
                .unwrap_err()
                .contains("does not match the manifest")
        );
        // A manifest that names another kind of predictor is not written.
        let mismatched = LearnedRouter {
            predictor: Predictor::Knn(KnnIndex::build(x.clone(), good.clone(), KnnParams::default())),
            manifest: manifest(PredictorKind::Mlp),
        };
        let dir = tempfile::tempdir().unwrap();
        let err = mismatched.save(dir.path()).unwrap_err().to_string();
        assert!(err.contains("kind"), "{err}");
        // A manifest that does not parse is invalid, not unreadable.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), b"{\"format_version\": 1,").unwrap();
        assert!(matches!(
            LearnedRouter::load(dir.path()),
            Err(ArtifactError::Invalid(_))
        ));
    }

    #[test]
    fn ranking_starts_with_the_decision_and_skips_disallowed_models() {
        let scores = [0.9f32, 0.85, 0.3, 0.99];
        let costs = [10.0, 2.0, 0.1, 20.0];
        let allowed = [true, true, true, false];
        assert_eq!(
            rank(&scores, &costs, &allowed, Objective::Tradeoff { lambda: 0.2 }),
            vec![1, 0, 2]
        );
        assert_eq!(
            rank(&scores, &costs, &allowed, Objective::Threshold { min_score: 0.8 }),
            vec![1, 0, 2]
        );
        assert_eq!(
            rank(&scores, &costs, &allowed, Objective::Tradeoff { lambda: 10.0 }),
            vec![2, 1, 0]
        );
        assert!(rank(&scores, &costs, &[false; 4], Objective::Tradeoff { lambda: 0.0 }).is_empty());
    }

    /// With a threshold, the fallbacks that still reach it come cheapest
    /// first, before those that do not.
    #[test]
    fn threshold_fallbacks_that_reach_it_come_cheapest_first() {
        let scores = [0.9f32, 0.85, 0.82, 0.5];
        let costs = [10.0, 2.0, 1.0, 0.1];
        assert_eq!(
            rank(&scores, &costs, &[true; 4], Objective::Threshold { min_score: 0.8 }),
            vec![2, 1, 0, 3]
        );
    }

    /// A score that is not a number never wins.
    #[test]
    fn a_score_that_is_not_a_number_is_the_worst() {
        let scores = [f32::NAN, 0.5, f32::INFINITY];
        let costs = [1.0, 1.0, 1.0];
        let all = [true; 3];
        for objective in [
            Objective::Tradeoff { lambda: 0.0 },
            Objective::Threshold { min_score: 0.4 },
            Objective::Threshold { min_score: 0.9 },
        ] {
            assert_eq!(decide(&scores, &costs, &all, objective), Some(1), "{objective:?}");
            assert_eq!(rank(&scores, &costs, &all, objective)[0], 1, "{objective:?}");
        }
    }

    #[test]
    fn lambda_means_the_same_whichever_candidates_are_allowed() {
        let scores = [0.9f32, 0.6, 0.45];
        let costs = [10.0, 2.0, 0.1];
        let lambda = Objective::Tradeoff { lambda: 0.2 };
        assert_eq!(decide(&scores, &costs, &[true, true, true], lambda), Some(0));
        // Without the dearest model, costs are still scaled by its cost:
        // 0.6 − 0.2 × 0.2 beats 0.45 − 0.2 × 0.01.
        assert_eq!(decide(&scores, &costs, &[false, true, true], lambda), Some(1));
        assert_eq!(rank(&scores, &costs, &[false, true, true], lambda), vec![1, 2]);
    }

    #[test]
    fn decisions_trade_quality_for_cost() {
        let scores = [0.9f32, 0.85, 0.3];
        let costs = [10.0, 2.0, 0.1];
        let all = [true; 3];
        assert_eq!(
            decide(&scores, &costs, &all, Objective::Tradeoff { lambda: 0.0 }),
            Some(0)
        );
        assert_eq!(
            decide(&scores, &costs, &all, Objective::Tradeoff { lambda: 0.2 }),
            Some(1)
        );
        assert_eq!(
            decide(&scores, &costs, &all, Objective::Tradeoff { lambda: 5.0 }),
            Some(2)
        );
        assert_eq!(
            decide(&scores, &costs, &all, Objective::Threshold { min_score: 0.8 }),
            Some(1)
        );
        assert_eq!(
            decide(&scores, &costs, &all, Objective::Threshold { min_score: 0.95 }),
            Some(0)
        );
        assert_eq!(
            decide(
                &scores,
                &costs,
                &[false, false, true],
                Objective::Tradeoff { lambda: 0.0 }
            ),
            Some(2),
            "only allowed candidates"
        );
        assert_eq!(
            decide(&scores, &costs, &[false; 3], Objective::Tradeoff { lambda: 0.0 }),
            None
        );
        assert_eq!(
            decide(
                &[0.5, 0.5],
                &[2.0, 1.0],
                &[true, true],
                Objective::Tradeoff { lambda: 0.0 }
            ),
            Some(1),
            "ties go to the cheaper model"
        );
        assert_eq!(
            decide(
                &[0.81, 0.95],
                &[0.0, 0.0],
                &[true, true],
                Objective::Threshold { min_score: 0.8 }
            ),
            Some(1),
            "equally cheap models above the threshold: the better one"
        );
    }
}
