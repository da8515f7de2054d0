//! `cargo xtask export-traces`: turns the gateway's request log (JSONL files,
//! rotated ones included, or a Redis stream) and the feedback given on it into
//! routing data for `cargo xtask train`.
//!
//! Each answered request that kept its prompt (`request_log.include_prompt`)
//! and was scored (`POST /v1/feedback`, or `--unrated-score`) is one
//! observation: the model group that answered, the score, the cost. Requests
//! with the same prompt become one sample with a score per model group (the
//! mean when a group answered it more than once), costs alongside.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchyard_routing::dataset::Sample;

/// Options of `cargo xtask export-traces`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Request-log files (JSONL); their rotated siblings `FILE.1`, `FILE.2`… are read too.
    #[arg(long = "input")]
    pub inputs: Vec<PathBuf>,
    /// Read the log from this Redis instead (`redis://host:port/db`).
    #[arg(long)]
    pub redis: Option<String>,
    /// The Redis stream key.
    #[arg(long, default_value = "switchyard:requests")]
    pub stream: String,
    /// Where to write the routing data (JSONL).
    #[arg(long)]
    pub out: PathBuf,
    /// Only requests that asked for this model group (e.g. a learned router's name).
    #[arg(long)]
    pub model: Option<String>,
    /// Score for answered requests nobody rated (default: they are left out).
    #[arg(long)]
    pub unrated_score: Option<f64>,
    /// Score for requests whose answer failed after routing (default: left out).
    #[arg(long)]
    pub failure_score: Option<f64>,
    /// Name of the task the samples are tagged with.
    #[arg(long, default_value = "traces")]
    pub task: String,
}

/// What an export found.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    /// Request records read.
    pub requests: usize,
    /// Feedback records read.
    pub feedback: usize,
    /// Requests with no prompt kept (the log was not told to keep them).
    pub without_prompt: usize,
    /// Requests left out for lack of a score.
    pub unrated: usize,
    /// Scores left out because a key rated another key's request.
    pub foreign_feedback: usize,
    /// Observations turned into samples.
    pub used: usize,
    /// Samples written.
    pub samples: usize,
    /// Observations per model group.
    pub per_model: BTreeMap<String, usize>,
    /// Groups every observation of which cost nothing (no price configured?).
    pub free: Vec<String>,
}

/// The rotated files of `path`, oldest first, then `path` itself.
fn with_rotated(path: &Path) -> Vec<PathBuf> {
    let mut rotated = Vec::new();
    for n in 1.. {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        let candidate = PathBuf::from(name);
        if !candidate.exists() {
            break;
        }
        rotated.push(candidate);
    }
    rotated.reverse();
    rotated.push(path.to_owned());
    rotated
}

/// What tells two open files apart: the device and inode where there are
/// any, else the canonical path.
fn file_identity(path: &Path, file: &std::fs::File) -> String {
    #[cfg(unix)]
    if let Ok(meta) = file.metadata() {
        use std::os::unix::fs::MetadataExt;
        return format!("{}:{}", meta.dev(), meta.ino());
    }
    #[cfg(not(unix))]
    let _ = file;
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

fn read_files(inputs: &[PathBuf]) -> Result<Vec<Value>> {
    let mut lines = Vec::new();
    // A file named as well as found among another's rotations is read once.
    let mut read = std::collections::HashSet::new();
    for input in inputs {
        if !input.exists() {
            bail!("{}: no such request log", input.display());
        }
        // Every file is opened before any is read: a rotation while the
        // export runs renames them, and an open file is read whole whatever
        // its name becomes.
        let mut files = Vec::new();
        for path in with_rotated(input) {
            match std::fs::File::open(&path) {
                Ok(file) => files.push((path, file)),
                // Rotated away (the oldest is deleted) since it was listed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    eprintln!("{}: gone since it was listed (rotated away)", path.display())
                }
                Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
            }
        }
        for (path, file) in files {
            if !read.insert(file_identity(&path, &file)) {
                continue;
            }
            // Read as bytes: a torn line may end inside a UTF-8 character.
            for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
                let line = line.with_context(|| format!("cannot read {}", path.display()))?;
                if line.trim_ascii().is_empty() {
                    continue;
                }
                match serde_json::from_slice(&line) {
                    Ok(v) => lines.push(v),
                    // A torn last line of a live file.
                    Err(e) => eprintln!("{}:{}: skipped: {e}", path.display(), i + 1),
                }
            }
        }
    }
    Ok(lines)
}

/// `url` with its user and password hidden, for messages.
fn shown_url(url: &str) -> String {
    // Everything up to the last `@` may be credentials, a password holding
    // an unencoded `/` included; a query may hold them too (a Unix socket's
    // `?pass=`), so it is hidden whole.
    let without_query = |rest: &str| match rest.split_once('?') {
        Some((path, _)) => format!("{path}?***"),
        None => rest.to_owned(),
    };
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(at) => format!("{scheme}://***@{}", without_query(&rest[at + 1..])),
            None => format!("{scheme}://{}", without_query(rest)),
        },
        None => match url.rfind('@') {
            Some(at) => format!("***@{}", without_query(&url[at + 1..])),
            None => without_query(url),
        },
    }
}

fn read_redis(url: &str, stream: &str) -> Result<Vec<Value>> {
    let shown = shown_url(url);
    // TLS (`rediss://`) builds its rustls configuration from the process's
    // provider, which must be chosen: more than one is compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("bad Redis URL {shown}: {e}"))?;
    let mut con = client
        .get_connection()
        .map_err(|e| anyhow::anyhow!("cannot connect to {shown}: {e}"))?;
    let mut unreadable = 0_usize;
    let mut lines = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let batch: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query(&mut con)
            .with_context(|| format!("XRANGE {stream}"))?;
        let Some((last, _)) = batch.last() else { break };
        start = format!("({last}");
        let done = batch.len() < 1000;
        for (_, fields) in batch {
            for (name, value) in fields {
                if name == "record" {
                    match serde_json::from_str(&value) {
                        Ok(v) => lines.push(v),
                        Err(_) => unreadable += 1,
                    }
                }
            }
        }
        if done {
            break;
        }
    }
    if unreadable > 0 {
        eprintln!("{stream}: skipped {unreadable} entries whose record is not JSON");
    }
    Ok(lines)
}

/// One prompt's scores and costs from one model group.
type Observed = (Vec<f64>, Vec<f64>);

/// Joins request records and feedback into routing samples.
pub fn join(lines: &[Value], args: &ExportArgs) -> (Vec<Sample>, Summary) {
    let mut summary = Summary::default();
    // Each score with the key that gave it (none: the master key, or a
    // gateway without keys).
    let mut scores: HashMap<&str, Vec<(Option<&str>, f64)>> = HashMap::new();
    // A rating read twice (a rotated file named as well as found) counts
    // once: the same request, key, score and time.
    let mut rated = std::collections::HashSet::new();
    for line in lines.iter().filter(|l| l["type"] == "feedback") {
        let seen = (
            line["request_id"].as_str(),
            line["key_ref"].as_str(),
            line["score"].as_f64().map(f64::to_bits),
            line["ts"].as_u64(),
        );
        if !rated.insert(seen) {
            continue;
        }
        summary.feedback += 1;
        if let (Some(id), Some(score)) = (line["request_id"].as_str(), line["score"].as_f64()) {
            scores.entry(id).or_default().push((line["key_ref"].as_str(), score));
        }
    }
    let mut by_prompt: BTreeMap<&str, BTreeMap<String, Observed>> = BTreeMap::new();
    // A record read twice (a rotated file named as well as found) counts once.
    let mut seen = std::collections::HashSet::new();
    for r in lines.iter().filter(|l| l["type"] == "request") {
        if let Some(id) = r["request_id"].as_str()
            && !seen.insert(id)
        {
            continue;
        }
        summary.requests += 1;
        if args.model.as_deref().is_some_and(|m| r["model"] != m) {
            continue;
        }
        let Some(prompt) = r["prompt"].as_str().filter(|p| !p.trim().is_empty()) else {
            summary.without_prompt += 1;
            continue;
        };
        let status = r["status"].as_u64().unwrap_or(0);
        let served = r["served_model"].as_str().map(str::to_owned);
        let id = r["request_id"].as_str().unwrap_or_default();
        // A virtual key's score counts only on that key's own requests.
        let asker = r["key_ref"].as_str();
        let rated = scores.get(id).and_then(|s| {
            let valid: Vec<f64> = s
                .iter()
                .filter(|(giver, _)| giver.is_none() || *giver == asker)
                .map(|(_, score)| *score)
                .collect();
            summary.foreign_feedback += s.len() - valid.len();
            (!valid.is_empty()).then(|| valid.iter().sum::<f64>() / valid.len() as f64)
        });
        let (model, score) = match (status, served) {
            (200, Some(model)) => match rated.or(args.unrated_score) {
                Some(score) => (model, score),
                None => {
                    summary.unrated += 1;
                    continue;
                }
            },
            // The gateway's own faults (a stream cut at shutdown, the
            // operator's credentials, billing or configuration) say nothing
            // of the model.
            (s, Some(model)) if s >= 500 && !NOT_THE_MODELS.contains(&r["error_class"].as_str().unwrap_or("")) => {
                match args.failure_score {
                    Some(score) => (model, score),
                    None => continue,
                }
            }
            _ => continue,
        };
        summary.used += 1;
        *summary.per_model.entry(model.clone()).or_default() += 1;
        let entry = by_prompt.entry(prompt).or_default().entry(model).or_default();
        entry.0.push(score);
        // What answering costs is read from answers: a failure is logged
        // with what it was charged (often nothing), which would make a model
        // that fails look cheap. A cost the log does not give is not known
        // (not free).
        // A cache hit is charged at the hit's rate, not what the model costs.
        if status == 200
            && r["cache"] != "hit"
            && let Some(cost) = r["cost_usd"].as_f64()
        {
            entry.1.push(cost);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let samples: Vec<Sample> = by_prompt
        .into_iter()
        .map(|(prompt, models)| {
            let digest = Sha256::digest(prompt.as_bytes());
            Sample {
                id: format!("trace-{}", hex_prefix(&digest)),
                query: prompt.to_owned(),
                scores: models.iter().map(|(m, (s, _))| (m.clone(), mean(s))).collect(),
                costs: Some(
                    models
                        .iter()
                        .filter(|(_, (_, c))| !c.is_empty())
                        .map(|(m, (_, c))| (m.clone(), mean(c)))
                        .collect(),
                ),
                cost_kind: Some("usd_total_per_query".into()),
                task: Some(args.task.clone()),
            }
        })
        .collect();
    summary.samples = samples.len();
    let mut spent: BTreeMap<&str, f64> = BTreeMap::new();
    for sample in &samples {
        for (model, cost) in sample.costs.iter().flatten() {
            *spent.entry(model.as_str()).or_default() += cost;
        }
    }
    summary.free = spent
        .into_iter()
        .filter(|(_, total)| *total <= 0.0)
        .map(|(model, _)| model.to_owned())
        .collect();
    (samples, summary)
}

fn hex_prefix(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Writes `samples` to `out` as JSON Lines, through a file beside it that
/// replaces it once whole: a failed export leaves an earlier one as it was.
/// A special file (`/dev/stdout`) is written directly.
fn write_samples(out: &Path, samples: &[Sample]) -> Result<()> {
    let special = std::fs::metadata(out).is_ok_and(|m| !m.is_file());
    let target = if special {
        out.to_owned()
    } else {
        let mut name = out.as_os_str().to_owned();
        name.push(format!(".{}.tmp", std::process::id()));
        PathBuf::from(name)
    };
    // Prompts of every tenant: readable by the owner only, as the request log is.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| -> Result<()> {
        let file = options
            .open(&target)
            .with_context(|| format!("cannot write {}", target.display()))?;
        // A file that was there keeps its mode otherwise.
        #[cfg(unix)]
        if file.metadata().is_ok_and(|m| m.is_file()) {
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .with_context(|| format!("cannot restrict {}", target.display()))?;
        }
        let mut writer = std::io::BufWriter::new(file);
        for sample in samples {
            serde_json::to_writer(&mut writer, sample)?;
            writer.write_all(b"\n")?;
        }
        writer.flush()?;
        if !special {
            writer.get_ref().sync_all()?;
            std::fs::rename(&target, out)
                .with_context(|| format!("cannot move {} to {}", target.display(), out.display()))?;
        }
        Ok(())
    })();
    if written.is_err() && !special {
        let _ = std::fs::remove_file(&target);
    }
    written
}

/// Runs the export.
pub fn run(args: &ExportArgs) -> Result<()> {
    if let Some(s) = args
        .unrated_score
        .into_iter()
        .chain(args.failure_score)
        .find(|s| !(0.0..=1.0).contains(s))
    {
        bail!("scores are between 0 and 1, not {s}");
    }
    let lines = match (&args.redis, args.inputs.is_empty()) {
        (Some(url), true) => read_redis(url, &args.stream)?,
        (None, false) => read_files(&args.inputs)?,
        (Some(_), false) => bail!("read either --input files or --redis, not both"),
        (None, true) => bail!("nothing to read: give --input FILE (the request log) or --redis URL"),
    };
    if lines.is_empty() {
        match &args.redis {
            Some(_) => bail!(
                "the Redis stream `{}` holds no records: is it the stream `telemetry.request_log.redis` writes?",
                args.stream
            ),
            None => bail!(
                "the request log files hold no records: {}",
                args.inputs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    let (samples, summary) = join(&lines, args);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_samples(&args.out, &samples)?;
    println!(
        "read {} requests and {} feedback records; {} without a prompt, {} unrated",
        summary.requests, summary.feedback, summary.without_prompt, summary.unrated
    );
    if summary.foreign_feedback > 0 {
        println!(
            "left out {} scores a key gave to another key's requests",
            summary.foreign_feedback
        );
    }
    for (model, n) in &summary.per_model {
        println!("  {model}: {n} scored answers");
    }
    for model in &summary.free {
        println!(
            "warning: every answer of `{model}` cost $0: if it is not free, its deployments have no price \
             (set input_cost_per_token and output_cost_per_token), and a router trained on this prefers it"
        );
    }
    println!("wrote {} samples to {}", summary.samples, args.out.display());
    if summary.samples == 0 {
        println!(
            "no samples: the request log needs `include_prompt: true`, and answers need feedback \
             (POST /v1/feedback) or --unrated-score"
        );
    }
    Ok(())
}

/// Failure classes of the gateway's own making, not a model's answer.
const NOT_THE_MODELS: &[&str] = &[
    "shutting_down",
    "internal_error",
    "no_deployment",
    "upstream_auth_error",
    "upstream_payment_required",
    "deployment_misconfigured",
    "upstream_not_found",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args() -> ExportArgs {
        ExportArgs {
            inputs: Vec::new(),
            redis: None,
            stream: "s".into(),
            out: PathBuf::from("out.jsonl"),
            model: None,
            unrated_score: None,
            failure_score: None,
            task: "traces".into(),
        }
    }

    fn request(id: &str, prompt: Option<&str>, model: &str, status: u16, cost: f64) -> Value {
        json!({"type": "request", "request_id": id, "model": "router", "served_model": model,
               "status": status, "cost_usd": cost, "prompt": prompt})
    }

    #[test]
    fn a_log_and_its_rotations_are_read_once_each_and_the_output_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        std::fs::write(dir.path().join("requests.jsonl.1"), "{\"n\":1}\n").unwrap();
        std::fs::write(&log, "{\"n\":2}\n").unwrap();
        // Named twice, and its rotation named as well: each file once.
        let inputs = [log.clone(), dir.path().join("requests.jsonl.1"), log.clone()];
        let lines = read_files(&inputs).unwrap();
        assert_eq!(lines, vec![json!({"n": 1}), json!({"n": 2})]);

        let out = dir.path().join("routing.jsonl");
        std::fs::write(&out, "an earlier export\n").unwrap();
        let sample = Sample {
            id: "a".into(),
            query: "q".into(),
            scores: BTreeMap::from([("m".to_owned(), 1.0)]),
            costs: None,
            cost_kind: None,
            task: Some("traces".into()),
        };
        write_samples(&out, std::slice::from_ref(&sample)).unwrap();
        let written = std::fs::read_to_string(&out).unwrap();
        assert!(written.starts_with("{\"id\":\"a\""), "{written}");
        // Nothing is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_tls_redis_url_that_cannot_be_reached_is_an_error() {
        // Nothing listens on port 9: the read fails to connect instead of
        // panicking over an unchosen TLS provider.
        let err = read_redis("rediss://127.0.0.1:9/", "switchyard:requests").unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot connect to rediss://127.0.0.1:9/"),
            "{err:#}"
        );
    }

    #[test]
    fn redis_urls_are_shown_without_their_password() {
        assert_eq!(shown_url("redis://:s3cret@cache:6379/0"), "redis://***@cache:6379/0");
        assert_eq!(shown_url("rediss://user:pa@ss@host"), "rediss://***@host");
        assert_eq!(shown_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(shown_url("redis://:pa/ss@host:6379/0"), "redis://***@host:6379/0");
        // A Unix socket's password is a query parameter.
        assert_eq!(
            shown_url("redis+unix:///run/redis.sock?db=0&pass=s3cret"),
            "redis+unix:///run/redis.sock?***"
        );
        assert_eq!(shown_url("unix:///s?pass=x"), "unix:///s?***");
        assert_eq!(
            shown_url("redis://:pa?ss@host/0?protocol=resp3"),
            "redis://***@host/0?***"
        );
    }

    #[test]
    fn a_rating_read_twice_counts_once() {
        let rating = json!({"type": "feedback", "request_id": "a", "score": 1.0, "ts": 5});
        let lines = vec![
            request("a", Some("write a poem"), "small", 200, 0.001),
            json!({"type": "feedback", "request_id": "a", "score": 0.0, "ts": 4}),
            rating.clone(),
            rating,
        ];
        let (samples, summary) = join(&lines, &args());
        assert_eq!(summary.feedback, 2);
        assert_eq!(samples[0].scores["small"], 0.5);
    }

    #[test]
    fn requests_and_feedback_become_one_sample_per_prompt() {
        let lines = vec![
            request("a", Some("write a poem"), "small", 200, 0.001),
            request("b", Some("write a poem"), "big", 200, 0.010),
            request("c", Some("write a poem"), "big", 200, 0.012),
            request("d", Some("sum 2 and 2"), "small", 200, 0.001),
            request("e", None, "small", 200, 0.001),
            request("f", Some("unrated"), "small", 200, 0.001),
            request("g", Some("failed"), "small", 502, 0.0),
            json!({"type": "request", "request_id": "h", "model": "router", "served_model": "big",
                   "status": 503, "error_class": "shutting_down", "prompt": "cut at shutdown"}),
            json!({"type": "request", "request_id": "i", "model": "router", "served_model": "big",
                   "status": 502, "error_class": "upstream_auth_error", "prompt": "the operator's key"}),
            json!({"type": "feedback", "request_id": "a", "score": 0.5}),
            json!({"type": "feedback", "request_id": "a", "score": 1.0}),
            json!({"type": "feedback", "request_id": "b", "score": 1.0}),
            json!({"type": "feedback", "request_id": "c", "score": 0.0}),
            json!({"type": "feedback", "request_id": "d", "score": 0.0}),
            // Another key's score on d is not counted; d's own key's is.
            json!({"type": "feedback", "request_id": "d", "score": 1.0, "key_ref": "other"}),
            json!({"type": "feedback", "request_id": "d", "score": 0.5, "key_ref": "owner"}),
        ];
        let mut lines = lines;
        lines[3]["key_ref"] = json!("owner");
        let (samples, summary) = join(&lines, &args());
        assert_eq!(samples.len(), 2);
        let poem = samples.iter().find(|s| s.query == "write a poem").unwrap();
        assert_eq!(poem.scores["small"], 0.75);
        assert_eq!(poem.scores["big"], 0.5);
        assert!((poem.costs.as_ref().unwrap()["big"] - 0.011).abs() < 1e-12);
        assert_eq!(summary.without_prompt, 1);
        assert_eq!(summary.unrated, 1);
        assert_eq!(summary.used, 4);
        assert_eq!(summary.feedback, 7);
        assert_eq!(summary.foreign_feedback, 1);
        let sum = samples.iter().find(|s| s.query == "sum 2 and 2").unwrap();
        assert_eq!(sum.scores["small"], 0.25, "the owner's 0.5 and the master's 0.0");

        let mut lenient = args();
        lenient.unrated_score = Some(1.0);
        lenient.failure_score = Some(0.0);
        let (samples, _) = join(&lines, &lenient);
        assert_eq!(samples.len(), 4);
        let failed = samples.iter().find(|s| s.query == "failed").unwrap();
        assert_eq!(failed.scores["small"], 0.0);
        // A failure's charge is not what answering costs.
        assert!(failed.costs.as_ref().unwrap().is_empty(), "{failed:?}");
        let flaky = vec![
            request("l", Some("flaky"), "small", 200, 0.002),
            request("m", Some("flaky"), "small", 502, 0.0),
        ];
        let (samples, _) = join(&flaky, &lenient);
        let costs = samples[0].costs.as_ref().unwrap();
        assert_eq!(costs["small"], 0.002, "{costs:?}");
        // A scored cache hit counts as the model's answer; its discounted
        // charge is not what the model costs.
        let mut hit = request("n", Some("again"), "small", 200, 0.0);
        hit["cache"] = json!("hit");
        let cached = vec![
            request("o", Some("again"), "small", 200, 0.003),
            hit,
            json!({"type": "feedback", "request_id": "n", "score": 1.0}),
            json!({"type": "feedback", "request_id": "o", "score": 0.0}),
        ];
        let (samples, summary) = join(&cached, &args());
        assert_eq!(summary.used, 2);
        assert_eq!(samples[0].scores["small"], 0.5);
        assert_eq!(samples[0].costs.as_ref().unwrap()["small"], 0.003);
        let mut other = args();
        other.model = Some("another-router".into());
        assert!(join(&lines, &other).0.is_empty());
        assert!(summary.free.is_empty());
        // A group whose answers all cost nothing is named (a missing price).
        let unpriced = vec![
            request("j", Some("hello"), "local", 200, 0.0),
            request("k", Some("hello"), "big", 200, 0.01),
            json!({"type": "feedback", "request_id": "j", "score": 1.0}),
            json!({"type": "feedback", "request_id": "k", "score": 1.0}),
        ];
        assert_eq!(join(&unpriced, &args()).1.free, vec!["local".to_owned()]);
    }
}
