//! Routing data: one query per JSON line with each model's quality on it and,
//! optionally, what answering cost.
//!
//! ```json
//! {"id": "q1", "query": "…", "scores": {"gpt-4o": 1.0, "llama-3-8b": 0.0},
//!  "costs": {"gpt-4o": 0.0042, "llama-3-8b": 0.0001}, "cost_kind": "usd_total_per_query", "task": "qa"}
//! ```
//!
//! `costs` may be `null`; they are each query's total cost in USD
//! (`cost_kind` `usd_total_per_query`, the only kind read; another is
//! refused). Any number of models, with any names, is accepted.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One line of a routing data file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Identifier of the query.
    #[serde(default)]
    pub id: String,
    /// The prompt text.
    pub query: String,
    /// Each model's quality on this query (higher is better, usually in
    /// [0, 1]); a model left out, or given `null`, was not scored on it (the
    /// gateway's own traces score only the model that answered).
    #[serde(deserialize_with = "scores_given")]
    pub scores: BTreeMap<String, f64>,
    /// What answering cost with each model, if known (a model given `null`
    /// has no known cost on this query).
    #[serde(default, deserialize_with = "costs_given")]
    pub costs: Option<BTreeMap<String, f64>>,
    /// What `costs` means, e.g. `usd_total_per_query`.
    #[serde(default)]
    pub cost_kind: Option<String>,
    /// The task or benchmark the query comes from.
    #[serde(default)]
    pub task: Option<String>,
}

/// A `scores` map without its `null` members (models not scored).
fn scores_given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let all = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(all.into_iter().filter_map(|(m, s)| Some((m, s?))).collect())
}

/// A `costs` map without its `null` members (costs not known).
fn costs_given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, f64>>, D::Error> {
    let all = Option::<BTreeMap<String, Option<f64>>>::deserialize(d)?;
    Ok(all.map(|all| all.into_iter().filter_map(|(m, c)| Some((m, c?))).collect()))
}

/// Why a data file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A line is not a valid sample.
    #[error("{path}:{line}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file has no samples.
    #[error("{0} contains no samples")]
    Empty(String),
}

/// A routing data set in matrix form: model `j`'s score and cost on query `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The samples, in file order.
    pub samples: Vec<Sample>,
    /// Every model named in any sample, sorted.
    pub models: Vec<String>,
    /// `scores[i][j]`: model `j` on query `i`; where a line has no score for
    /// the model, its mean score over the lines that have one (unknown is not
    /// a failure), or 0 for a model scored nowhere.
    pub scores: Vec<Vec<f32>>,
    /// How many (query, model) scores were missing and filled in so.
    pub missing_scores: usize,
    /// Models no line gives a cost for while others have costs: they count
    /// as free, which routing at any λ > 0 favours.
    pub uncosted: Vec<String>,
    /// `costs[i][j]`: cost of model `j` on query `i` (the model's mean cost
    /// where a line gives none; all zero when the file has no costs).
    pub costs: Vec<Vec<f64>>,
    /// SHA-256 of the file's bytes, recorded in router manifests.
    pub hash: String,
}

impl Dataset {
    /// Reads a JSON Lines file.
    pub fn load(path: &Path) -> Result<Self, DatasetError> {
        let display = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| DatasetError::Read {
            path: display.clone(),
            reason: e.to_string(),
        })?;
        let hash = format!("{:x}", Sha256::digest(&bytes));
        let mut samples = Vec::new();
        for (i, line) in bytes.lines().enumerate() {
            let line = line.map_err(|e| DatasetError::Read {
                path: display.clone(),
                reason: e.to_string(),
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let sample: Sample = serde_json::from_str(&line).map_err(|e| DatasetError::Invalid {
                path: display.clone(),
                line: i + 1,
                reason: e.to_string(),
            })?;
            if sample.scores.is_empty() {
                return Err(DatasetError::Invalid {
                    path: display,
                    line: i + 1,
                    reason: "`scores` is empty".into(),
                });
            }
            // Scores are held as `f32`: one past its range would only be
            // found when the trained router is saved.
            if let Some((model, score)) = sample.scores.iter().find(|(_, v)| !(**v as f32).is_finite()) {
                return Err(DatasetError::Invalid {
                    path: display,
                    line: i + 1,
                    reason: format!("the score of `{model}` is {score}: scores are numbers within ±3.4e38"),
                });
            }
            if let Some((model, cost)) = sample
                .costs
                .iter()
                .flatten()
                .find(|(_, c)| !(**c as f32).is_finite() || **c < 0.0)
            {
                return Err(DatasetError::Invalid {
                    path: display,
                    line: i + 1,
                    reason: format!("the cost of `{model}` is {cost}: costs are not negative, and within 3.4e38"),
                });
            }
            // Costs are what answering the query cost; prices per token
            // would rank models by the wrong measure.
            if let Some(kind) = sample
                .cost_kind
                .as_deref()
                .filter(|k| !matches!(*k, "usd_total_per_query" | "usd_per_query" | "usd"))
            {
                return Err(DatasetError::Invalid {
                    path: display,
                    line: i + 1,
                    reason: format!(
                        "`cost_kind` `{kind}` is not supported: give each query's total cost in USD (`usd_total_per_query`)"
                    ),
                });
            }
            samples.push(sample);
        }
        if samples.is_empty() {
            return Err(DatasetError::Empty(display));
        }
        let mut dataset = Self::from_samples(samples);
        dataset.hash = hash;
        Ok(dataset)
    }

    /// Builds the matrices from samples (the hash is left empty).
    pub fn from_samples(samples: Vec<Sample>) -> Self {
        let mut models: Vec<String> = samples.iter().flat_map(|s| s.scores.keys().cloned()).collect();
        models.sort();
        models.dedup();
        Self::with_models(samples, models)
    }

    /// Builds the matrices for a given model order (a score a sample lacks
    /// is the model's mean score).
    pub fn with_models(samples: Vec<Sample>, models: Vec<String>) -> Self {
        let mut score_sum = vec![0.0; models.len()];
        let mut scored = vec![0usize; models.len()];
        for s in &samples {
            for (j, m) in models.iter().enumerate() {
                if let Some(v) = s.scores.get(m).filter(|v| v.is_finite()) {
                    score_sum[j] += v;
                    scored[j] += 1;
                }
            }
        }
        let mean_score: Vec<f64> = score_sum
            .iter()
            .zip(&scored)
            .map(|(s, &c)| if c == 0 { 0.0 } else { s / c as f64 })
            .collect();
        let mut missing_scores = 0;
        let scores = samples
            .iter()
            .map(|s| {
                models
                    .iter()
                    .enumerate()
                    .map(|(j, m)| match s.scores.get(m).filter(|v| v.is_finite()) {
                        Some(v) => *v as f32,
                        None => {
                            missing_scores += 1;
                            mean_score[j] as f32
                        }
                    })
                    .collect()
            })
            .collect();
        // Mean known cost per model, used where a line gives none.
        let mut sum = vec![0.0; models.len()];
        let mut count = vec![0usize; models.len()];
        for s in &samples {
            if let Some(costs) = &s.costs {
                for (j, m) in models.iter().enumerate() {
                    if let Some(c) = costs.get(m).filter(|c| c.is_finite()) {
                        sum[j] += c;
                        count[j] += 1;
                    }
                }
            }
        }
        let mean: Vec<f64> = sum
            .iter()
            .zip(&count)
            .map(|(s, &c)| if c == 0 { 0.0 } else { s / c as f64 })
            .collect();
        let costs = samples
            .iter()
            .map(|s| {
                models
                    .iter()
                    .enumerate()
                    .map(|(j, m)| {
                        s.costs
                            .as_ref()
                            .and_then(|c| c.get(m))
                            .copied()
                            .filter(|c| c.is_finite())
                            .unwrap_or(mean[j])
                    })
                    .collect()
            })
            .collect();
        let uncosted = if count.iter().any(|&c| c > 0) {
            models
                .iter()
                .zip(&count)
                .filter(|(_, c)| **c == 0)
                .map(|(m, _)| m.clone())
                .collect()
        } else {
            Vec::new()
        };
        Self {
            samples,
            models,
            scores,
            costs,
            missing_scores,
            uncosted,
            hash: String::new(),
        }
    }

    /// Each model's mean cost over the data set.
    pub fn mean_costs(&self) -> Vec<f64> {
        let n = self.costs.len().max(1) as f64;
        (0..self.models.len())
            .map(|j| self.costs.iter().map(|row| row[j]).sum::<f64>() / n)
            .collect()
    }

    /// The query texts.
    pub fn queries(&self) -> Vec<&str> {
        self.samples.iter().map(|s| s.query.as_str()).collect()
    }

    /// Splits off a validation set: every `1/fraction`-th sample after a
    /// seeded shuffle goes to the second set.
    pub fn split(&self, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        fastrand::Rng::with_seed(seed).shuffle(&mut order);
        let n_val = ((self.samples.len() as f64) * fraction).round() as usize;
        let val = order[..n_val.min(order.len())].to_vec();
        let train = order[n_val.min(order.len())..].to_vec();
        (train, val)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lines_with_and_without_costs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"id":"a","query":"q1","scores":{"m2":1.0,"m1":0.0},"costs":{"m1":1.0,"m2":3.0},"cost_kind":"usd_total_per_query","task":"t"}"#,
                "\n\n",
                r#"{"id":"b","query":"q2","scores":{"m1":1.0,"m3":0.5},"costs":null}"#,
                "\n",
                r#"{"id":"c","query":"q3","scores":{"m1":null,"m2":0.0}}"#,
                "\n"
            ),
        )
        .unwrap();
        let d = Dataset::load(&path).unwrap();
        assert_eq!(d.models, ["m1", "m2", "m3"]);
        // A score a line lacks (or gives as null) is unknown, not a failure:
        // the model's mean score over the lines that have one.
        assert_eq!(
            d.scores,
            vec![vec![0.0, 1.0, 0.5], vec![1.0, 0.5, 0.5], vec![0.5, 0.0, 0.5]]
        );
        assert_eq!(d.missing_scores, 4);
        assert_eq!(d.costs[1], vec![1.0, 3.0, 0.0], "missing costs use the model's mean");
        assert_eq!(d.hash.len(), 64);
        std::fs::write(&path, "{\"query\": 1}\n").unwrap();
        assert!(Dataset::load(&path).unwrap_err().to_string().contains(":1:"));
        // A null cost is not known; a negative one is refused.
        std::fs::write(
            &path,
            concat!(
                r#"{"query":"q1","scores":{"m1":1.0,"m2":0.0},"costs":{"m1":2.0,"m2":null}}"#,
                "\n",
                r#"{"query":"q2","scores":{"m1":1.0,"m2":0.0},"costs":{"m1":4.0,"m2":1.0}}"#,
                "\n"
            ),
        )
        .unwrap();
        let d = Dataset::load(&path).unwrap();
        assert_eq!(d.costs[0], vec![2.0, 1.0], "the model's mean cost");
        std::fs::write(&path, r#"{"query":"q","scores":{"m1":1.0},"costs":{"m1":-0.5}}"#).unwrap();
        let err = Dataset::load(&path).unwrap_err().to_string();
        assert!(err.contains("not negative"), "{err}");
        // Scores and costs are kept as `f32`: one past its range is refused
        // at its line, not when the trained router is saved.
        std::fs::write(
            &path,
            "{\"query\":\"q\",\"scores\":{\"m1\":1.0}}\n{\"query\":\"q\",\"scores\":{\"m1\":1e39}}\n",
        )
        .unwrap();
        let err = Dataset::load(&path).unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("m1"), "{err}");
        std::fs::write(&path, r#"{"query":"q","scores":{"m1":1.0},"costs":{"m1":1e300}}"#).unwrap();
        assert!(Dataset::load(&path).is_err());
    }

    #[test]
    fn costs_are_per_query_totals_and_uncosted_models_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(
            &path,
            r#"{"id":"a","query":"q","scores":{"m1":1.0,"m2":0.0},"costs":{"m1":0.5},"cost_kind":"usd_total_per_query","task":"t"}"#,
        )
        .unwrap();
        assert_eq!(Dataset::load(&path).unwrap().uncosted, vec!["m2".to_owned()]);
        std::fs::write(
            &path,
            r#"{"id":"a","query":"q","scores":{"m1":1.0},"costs":{"m1":0.5},"cost_kind":"usd_per_million_tokens","task":"t"}"#,
        )
        .unwrap();
        let refused = Dataset::load(&path).unwrap_err().to_string();
        assert!(refused.contains("usd_per_million_tokens"), "{refused}");
    }
}
