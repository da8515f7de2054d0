//! `cargo xtask train` and `cargo xtask eval`: learned routers from routing
//! data (JSON Lines, see `switchyard_routing::dataset`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use switchyard_routing::dataset::Dataset;
use switchyard_routing::embed::{Embedder, EmbedderConfig, Truncation};
use switchyard_routing::eval::{Report, evaluate};
use switchyard_routing::knn::{KnnIndex, KnnParams};
use switchyard_routing::learned::{FORMAT_VERSION, LearnedRouter, Manifest, Predictor, PredictorKind};
use switchyard_routing::mlp::{Mlp, MlpParams};

use crate::util::{self, header};

/// Which predictor to train.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    /// K nearest neighbours over an HNSW index.
    Knn,
    /// A multi-layer perceptron.
    Mlp,
}

/// Options of `cargo xtask train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The predictor.
    #[arg(long)]
    pub router: Kind,
    /// Training data (JSON Lines).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the router artifact.
    #[arg(long)]
    pub out: PathBuf,
    /// The embedding model directory.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub model_dir: PathBuf,
    /// Seed of the validation split and of the MLP.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Share of the data held out for validation (MLP early stopping, metrics).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// KNN: neighbours per query (1 to 1000, as a router may hold).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub k: u16,
    /// MLP: hidden width (1 to 65536, as a router may hold).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub hidden: u32,
    /// MLP: most epochs.
    #[arg(long, default_value_t = 200)]
    pub max_epochs: usize,
    /// The embedder's longest input in tokens: the gateway's
    /// `embedder.max_tokens`, which a router must be trained with.
    #[arg(long, default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(8..=512))]
    pub max_tokens: usize,
    /// Which end of a long prompt the embedder keeps (`head` or `tail`):
    /// the gateway's `embedder.truncation`.
    #[arg(long, default_value = "tail", value_parser = ["head", "tail"])]
    pub truncation: String,
}

/// Options of `cargo xtask eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The router artifact directory.
    #[arg(long)]
    pub router: PathBuf,
    /// Evaluation data (JSON Lines).
    #[arg(long)]
    pub data: PathBuf,
    /// The embedding model directory.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub model_dir: PathBuf,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw the cost–quality curves into this PNG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed_precise} {prefix}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

fn embedder(root: &Path, model_dir: &Path, max_tokens: usize, truncation: Truncation) -> Result<Embedder> {
    let dir = if model_dir.is_absolute() {
        model_dir.to_owned()
    } else {
        root.join(model_dir)
    };
    Embedder::load(&EmbedderConfig {
        model_dir: dir.clone(),
        cache_entries: 0,
        max_tokens,
        truncation,
        ..EmbedderConfig::default()
    })
    .with_context(|| {
        format!(
            "loading the embedder from {} (run `cargo xtask models fetch`)",
            dir.display()
        )
    })
}

/// Embeds every query, reusing a cache keyed by the data's hash and the embedder.
fn embed_all(root: &Path, embedder: &Embedder, data: &Dataset) -> Result<Vec<Vec<f32>>> {
    let id: String = embedder
        .id()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let cache = util::target_dir(root)?
        .join("embed-cache")
        .join(format!("{}-{id}.safetensors", data.hash));
    if let Ok(tensors) = candle_core::safetensors::load(&cache, &Device::Cpu)
        && let Some(t) = tensors.get("embeddings")
    {
        let rows = t.to_vec2::<f32>()?;
        if rows.len() == data.samples.len() {
            println!("embeddings from cache {}", cache.display());
            return Ok(rows);
        }
    }
    let queries = data.queries();
    let mut out = Vec::with_capacity(queries.len());
    let bar = progress(queries.len(), "embedding");
    for chunk in queries.chunks(64) {
        out.extend(embedder.embed(chunk)?);
        bar.set_position(out.len() as u64);
    }
    bar.finish();
    // The cache only saves time: failing to keep it is a warning.
    let width = out.first().map_or(0, Vec::len);
    let flat: Vec<f32> = out.iter().flatten().copied().collect();
    let kept = cache
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(Tensor::from_vec(flat, (out.len(), width), &Device::Cpu)?))
        .and_then(|tensor| {
            Ok(candle_core::safetensors::save(
                &HashMap::from([("embeddings".to_owned(), tensor)]),
                &cache,
            )?)
        });
    if let Err(e) = kept {
        eprintln!("warning: the embeddings are not cached in {}: {e:#}", cache.display());
    }
    Ok(out)
}

fn pick<T: Clone>(rows: &[T], idx: &[usize]) -> Vec<T> {
    idx.iter().map(|&i| rows[i].clone()).collect()
}

fn print_report(r: &Report) {
    println!("{:<44} {:>9} {:>12}", "router", "quality", "cost/query");
    println!("{:<44} {:>9.4} {:>12.6}", "oracle", r.oracle.quality, r.oracle.cost);
    for (name, p) in &r.single {
        println!("{:<44} {:>9.4} {:>12.6}", format!("single: {name}"), p.quality, p.cost);
    }
    println!("{:<44} {:>9.4} {:>12.6}", "random", r.random.quality, r.random.cost);
    for s in r.sweep.iter().step_by(5) {
        println!(
            "{:<44} {:>9.4} {:>12.6}",
            format!("router λ={:.4}", s.lambda),
            s.point.quality,
            s.point.cost
        );
    }
    println!();
    println!(
        "AIQ: router {:.4}, zero router {:.4}, oracle {:.4}",
        r.aiq, r.zero_router_aiq, r.oracle_aiq
    );
    // Shares of the best single model's cost mean nothing when it costs $0.
    let free = r.best_single.1.cost <= 0.0;
    let pct = |v: Option<f64>| match v {
        Some(c) => format!("{:.1}%", c * 100.0),
        None if free => "n/a (it costs $0)".to_owned(),
        None => "never".to_owned(),
    };
    println!(
        "cost to reach {} quality: 95% → {} of its cost, 100% → {}",
        r.best_single.0,
        pct(r.cost_for_95),
        pct(r.cost_for_100)
    );
}

/// Says how many scores the data leaves out (traces score only the model
/// that answered): each is taken as its model's mean score.
fn warn_missing_scores(data: &Dataset) {
    let all = data.samples.len() * data.models.len();
    if data.missing_scores > 0 {
        println!(
            "note: {} of {all} (query, model) scores are missing; each is taken as its model's mean score",
            data.missing_scores
        );
    }
    if data
        .samples
        .iter()
        .all(|s| s.costs.as_ref().is_none_or(BTreeMap::is_empty))
    {
        println!(
            "warning: no line gives costs (`costs`), so every model counts as free and λ changes nothing: \
             the router picks by predicted quality alone"
        );
    } else if !data.uncosted.is_empty() {
        println!(
            "warning: no line gives a cost for {:?}; they count as free, which any λ > 0 favours",
            data.uncosted
        );
    }
}

/// Each query's scores for training, and the models' mean costs over the
/// training queries. A score a query leaves out is its model's mean over
/// the training queries, validation queries included: no validation score
/// reaches a training label, and a model scored on no validation query is
/// not taken there for a model that scores 0 (which would stop training
/// early on a loss it cannot lower).
fn split_scores(data: &Dataset, train_idx: &[usize], val_idx: &[usize]) -> (Vec<Vec<f32>>, Vec<f64>) {
    let train_data = Dataset::with_models(pick(&data.samples, train_idx), data.models.clone());
    let mut full = data.scores.clone();
    for (row, &i) in train_data.scores.iter().zip(train_idx) {
        full[i].clone_from(row);
    }
    let train_means: Vec<f32> = (0..data.models.len())
        .map(|j| {
            let given: Vec<f64> = train_idx
                .iter()
                .filter_map(|&i| data.samples.get(i)?.scores.get(&data.models[j]).copied())
                .filter(|v| v.is_finite())
                .collect();
            if given.is_empty() {
                0.0
            } else {
                (given.iter().sum::<f64>() / given.len() as f64) as f32
            }
        })
        .collect();
    for &i in val_idx {
        let Some(sample) = data.samples.get(i) else {
            continue;
        };
        full[i] = data
            .models
            .iter()
            .zip(&train_means)
            .map(|(m, mean)| {
                sample
                    .scores
                    .get(m)
                    .filter(|v| v.is_finite())
                    .map_or(*mean, |v| *v as f32)
            })
            .collect();
    }
    (full, train_data.mean_costs())
}

/// Trains a router and writes its artifact.
pub fn train(args: &TrainArgs) -> Result<()> {
    let root = util::workspace_root()?;
    header(&format!("train {:?} router on {}", args.router, args.data.display()));
    let data = Dataset::load(&args.data)?;
    warn_missing_scores(&data);
    if !(0.0..0.9).contains(&args.val_fraction) {
        bail!("--val-fraction must be in [0, 0.9)");
    }
    if args.max_epochs == 0 {
        bail!("--max-epochs must be at least 1");
    }
    if matches!(args.router, Kind::Mlp)
        && let Some(score) = data.scores.iter().flatten().find(|s| !(0.0..=1.0).contains(*s))
    {
        bail!(
            "the MLP is trained on scores in [0, 1] (binary cross-entropy); this data has {score}: rescale it (e.g. divide 1–10 ratings by 10)"
        );
    }
    let truncation = match args.truncation.as_str() {
        "head" => Truncation::Head,
        "tail" => Truncation::Tail,
        other => bail!("--truncation must be head or tail, not {other}"),
    };
    let embedder = embedder(&root, &args.model_dir, args.max_tokens, truncation)?;
    let x = embed_all(&root, &embedder, &data)?;
    let (train_idx, val_idx) = data.split(args.val_fraction, args.seed);
    if train_idx.is_empty() {
        bail!(
            "{} queries leave none to train on with --val-fraction {}: give more data or a smaller fraction",
            data.samples.len(),
            args.val_fraction
        );
    }
    let val_or_train = if val_idx.is_empty() { &train_idx } else { &val_idx };
    let (scores, mean_costs) = split_scores(&data, &train_idx, &val_idx);
    let mut metrics = serde_json::Map::new();
    let (predictor, knn, mlp) = match args.router {
        Kind::Knn => {
            let params = KnnParams {
                k: usize::from(args.k),
                ..KnnParams::default()
            };
            let index = KnnIndex::build(pick(&x, &train_idx), pick(&scores, &train_idx), params);
            let recall = index.recall_at_k(&pick(&x, val_or_train), params.k);
            println!("HNSW recall@{} against exact search: {recall:.4}", params.k);
            metrics.insert("recall_at_k".into(), recall.into());
            (Predictor::Knn(index), Some(params), None)
        }
        Kind::Mlp => {
            let params = MlpParams {
                hidden: args.hidden as usize,
                max_epochs: args.max_epochs,
                seed: args.seed,
                ..MlpParams::default()
            };
            let bar = progress(params.max_epochs, "epochs");
            let (mlp, report) = Mlp::train_with(&x, &scores, &train_idx, &val_idx, &params, &mut |e| {
                bar.set_position(e.epoch as u64);
                bar.set_prefix(format!(
                    "train loss {:.4}, validation loss {:.4}",
                    e.train_loss, e.val_loss
                ));
            })?;
            bar.finish();
            println!(
                "trained {} epochs; best validation loss {:.4} at epoch {}",
                report.epochs, report.best_val_loss, report.best_epoch
            );
            metrics.insert("training".into(), serde_json::to_value(&report)?);
            (Predictor::Mlp(mlp), None, Some(params))
        }
    };
    let router = LearnedRouter {
        manifest: Manifest {
            format_version: FORMAT_VERSION,
            kind: match args.router {
                Kind::Knn => PredictorKind::Knn,
                Kind::Mlp => PredictorKind::Mlp,
            },
            embedder: embedder.id().to_owned(),
            dims: embedder.dims(),
            models: data.models.clone(),
            mean_costs: mean_costs.clone(),
            data_hash: data.hash.clone(),
            knn,
            mlp,
            metrics: serde_json::Value::Null,
            data_file_sha256: None,
        },
        predictor,
    };
    let predicted = val_or_train
        .iter()
        .map(|&i| router.predict(&x[i]))
        .collect::<Result<Vec<_>, _>>()?;
    let report = evaluate(
        &data.models,
        &predicted,
        &pick(&data.scores, val_or_train),
        &pick(&data.costs, val_or_train),
        &mean_costs,
    );
    // Without a validation split the figures are on the training data, and say so.
    let split = if val_idx.is_empty() { "training" } else { "validation" };
    println!("{split} ({} queries):", val_or_train.len());
    print_report(&report);
    metrics.insert(format!("{split}_aiq"), report.aiq.into());
    metrics.insert(format!("{split}_queries"), val_or_train.len().into());
    let mut router = router;
    router.manifest.metrics = serde_json::Value::Object(metrics);
    // `save` refuses, before writing anything, what the gateway would refuse.
    router.save(&args.out)?;
    // The files as written read back (a full disk, a file changed meanwhile).
    if let Err(e) = LearnedRouter::load(&args.out) {
        bail!("the router written to {} does not load: {e}", args.out.display());
    }
    println!("router written to {}", args.out.display());
    Ok(())
}

/// Evaluates a router artifact on a data file.
pub fn eval(args: &EvalArgs) -> Result<()> {
    let root = util::workspace_root()?;
    header(&format!("eval {} on {}", args.router.display(), args.data.display()));
    let router = LearnedRouter::load(&args.router)?;
    // The router's own input settings, from the embedder it names.
    let (max_tokens, truncation) = Embedder::settings_of(&router.manifest.embedder).with_context(|| {
        format!(
            "the router names an embedder `{}` of no known form",
            router.manifest.embedder
        )
    })?;
    let embedder = embedder(&root, &args.model_dir, max_tokens, truncation)?;
    if !embedder.fits(&router.manifest.embedder) {
        bail!(
            "the router was trained with embedder `{}`, not `{}`",
            router.manifest.embedder,
            embedder.id()
        );
    }
    let loaded = Dataset::load(&args.data)?;
    // A candidate the data never scores would count as scoring 0 at cost 0.
    let missing: Vec<&String> = router
        .manifest
        .models
        .iter()
        .filter(|m| !loaded.models.contains(m))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} has no scores for the router's candidates {missing:?} (it scores {:?})",
            args.data.display(),
            loaded.models
        );
    }
    let hash = loaded.hash.clone();
    let data = Dataset {
        hash,
        ..Dataset::with_models(loaded.samples, router.manifest.models.clone())
    };
    warn_missing_scores(&data);
    if data.hash == router.manifest.data_hash {
        println!(
            "note: {} is the data this router was trained on: the figures below are not a test of it",
            args.data.display()
        );
    }
    let x = embed_all(&root, &embedder, &data)?;
    let predicted = x.iter().map(|e| router.predict(e)).collect::<Result<Vec<_>, _>>()?;
    let report = evaluate(
        &data.models,
        &predicted,
        &data.scores,
        &data.costs,
        &router.manifest.mean_costs,
    );
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        let name = args
            .router
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let data_name = args
            .data
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        if crate::plot::plot(&report, &format!("router {name} on {data_name}"), path)? {
            println!("plot written to {}", path.display());
        } else {
            eprintln!(
                "warning: no plot written to {}: no model has a cost in this data, so there is no cost axis",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_routing::dataset::Sample;

    #[test]
    fn validation_scores_do_not_fill_training_labels() {
        let sample = |id: &str, b: Option<f64>| Sample {
            id: id.into(),
            query: id.into(),
            scores: [("a".to_owned(), 0.5)]
                .into_iter()
                .chain(b.map(|b| ("b".to_owned(), b)))
                .collect(),
            costs: None,
            cost_kind: None,
            task: None,
        };
        // `b` is scored only on the validation query (index 2).
        let data = Dataset::with_models(
            vec![sample("q0", None), sample("q1", None), sample("q2", Some(1.0))],
            vec!["a".into(), "b".into()],
        );
        assert_eq!(data.scores[0][1], 1.0, "the whole file's mean");
        let (scores, _) = split_scores(&data, &[0, 1], &[2]);
        assert_eq!(scores[0][1], 0.0, "scored on no training query");
        assert_eq!(scores[1][1], 0.0);
        assert_eq!(scores[2][1], 1.0);
        // `b` is scored only on training queries: a validation query that
        // leaves it out gets its training mean, not 0.
        let data = Dataset::with_models(
            vec![sample("q0", Some(0.8)), sample("q1", Some(0.6)), sample("q2", None)],
            vec!["a".into(), "b".into()],
        );
        let (scores, _) = split_scores(&data, &[0, 1], &[2]);
        assert!((scores[2][1] - 0.7).abs() < 1e-6, "{:?}", scores[2]);
        assert_eq!(scores[2][0], 0.5);
    }
}
