//! A small real training run that writes Hugging Face Trainer-style checkpoint folders.
//!
//! Model: token embeddings (a bag of tokens, mean-pooled) → Linear → ReLU → Linear, trained with
//! Adam on a synthetic regression task. Each batch gives gradients only to the embedding rows of
//! its tokens (Zipf-distributed, so rare rows are seldom touched; Adam's moments still move the
//! rows they have seen). Each checkpoint folder holds:
//! `model.safetensors`, `optimizer.safetensors` (Adam's exp_avg / exp_avg_sq per parameter),
//! `scheduler.json`, `rng_state.bin`, `trainer_state.json` and `config.json`.
//!
//! Usage: `train OUT_DIR [--checkpoints N] [--steps-per-checkpoint S] [--seed X]`
//! (also usable as a library-free data generator for tests and benchmarks).

// Dense linear algebra reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

use cairn::DType;
use std::path::Path;

const VOCAB: usize = 2048;
const DIM: usize = 64;
const HIDDEN: usize = 256;
const OUT: usize = 8;
const BATCH: usize = 16;
const TOKENS: usize = 12;
const LR: f32 = 3e-3;
const BETAS: (f32, f32) = (0.9, 0.999);
const EPS: f32 = 1e-8;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}

struct Param {
    name: &'static str,
    shape: Vec<usize>,
    w: Vec<f32>,
    g: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Param {
    fn new(name: &'static str, shape: Vec<usize>, scale: f32, rng: &mut Rng) -> Param {
        let n = shape.iter().product();
        Param {
            name,
            shape,
            w: (0..n).map(|_| rng.normal() * scale).collect(),
            g: vec![0.0; n],
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }
    fn adam(&mut self, t: i32) {
        let (b1, b2) = BETAS;
        let c1 = 1.0 - b1.powi(t);
        let c2 = 1.0 - b2.powi(t);
        for i in 0..self.w.len() {
            let g = self.g[i];
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            self.w[i] -= LR * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + EPS);
            self.g[i] = 0.0;
        }
    }
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)]) {
    // All F32: the Python package's layout order is then simply by name.
    let mut sorted: Vec<&(String, Vec<usize>, Vec<u8>)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let specs: Vec<(String, DType, Vec<u64>)> = sorted
        .iter()
        .map(|(n, s, _)| (n.clone(), DType::F32, s.iter().map(|&d| d as u64).collect()))
        .collect();
    let mut out =
        cairn::formats::safetensors::serialize_header(&specs, None).expect("valid tensors");
    for (_, _, data) in sorted {
        out.extend_from_slice(data);
    }
    std::fs::write(path, out).expect("write safetensors");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out_dir = args
        .get(1)
        .expect("usage: train OUT_DIR [--checkpoints N] [--steps-per-checkpoint S] [--seed X]");
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    let checkpoints = flag("--checkpoints", 5);
    let per = flag("--steps-per-checkpoint", 20);
    let mut rng = Rng(flag("--seed", 42) | 1);

    let mut params = vec![
        Param::new("embed.weight", vec![VOCAB, DIM], 0.02, &mut rng),
        Param::new(
            "layer1.weight",
            vec![HIDDEN, DIM],
            (2.0 / DIM as f32).sqrt(),
            &mut rng,
        ),
        Param::new("layer1.bias", vec![HIDDEN], 0.0, &mut rng),
        Param::new(
            "layer2.weight",
            vec![OUT, HIDDEN],
            (1.0 / HIDDEN as f32).sqrt(),
            &mut rng,
        ),
        Param::new("layer2.bias", vec![OUT], 0.0, &mut rng),
    ];
    // The task: targets are a fixed random linear function of the pooled true embeddings.
    let teacher: Vec<f32> = (0..OUT * DIM).map(|_| rng.normal()).collect();
    let true_embed: Vec<f32> = (0..VOCAB * DIM).map(|_| rng.normal()).collect();
    // Zipf-ish token frequencies: a few tokens are common, most are rare.
    let sample_token = |rng: &mut Rng| -> usize {
        let u = rng.uniform();
        ((u * u * u * u) * VOCAB as f32) as usize % VOCAB
    };
    let batch = |rng: &mut Rng| -> Vec<(Vec<usize>, Vec<f32>)> {
        (0..BATCH)
            .map(|_| {
                let toks: Vec<usize> = (0..TOKENS).map(|_| sample_token(rng)).collect();
                let mut pooled = vec![0f32; DIM];
                for &t in &toks {
                    for d in 0..DIM {
                        pooled[d] += true_embed[t * DIM + d] / TOKENS as f32;
                    }
                }
                let y = (0..OUT)
                    .map(|o| (0..DIM).map(|d| teacher[o * DIM + d] * pooled[d]).sum())
                    .collect();
                (toks, y)
            })
            .collect()
    };
    let eval_set = batch(&mut Rng(7));
    let mut log_history = Vec::new();
    let mut step = 0u64;
    for ck in 1..=checkpoints {
        let mut last_loss = 0.0;
        for _ in 0..per {
            step += 1;
            let data = batch(&mut rng);
            last_loss = forward_backward(&mut params, &data, true);
            for p in params.iter_mut() {
                p.adam(step as i32);
            }
        }
        let eval_loss = forward_backward(&mut params, &eval_set, false);
        log_history.push(serde_json::json!({"step": step, "epoch": step as f64 / 100.0, "loss": last_loss, "eval_loss": eval_loss}));
        let dir = Path::new(out_dir).join(format!("checkpoint-{step}"));
        std::fs::create_dir_all(&dir).expect("create checkpoint dir");
        let model: Vec<_> = params
            .iter()
            .map(|p| (p.name.to_string(), p.shape.clone(), bytes(&p.w)))
            .collect();
        write_safetensors(&dir.join("model.safetensors"), &model);
        let mut opt = Vec::new();
        for p in &params {
            opt.push((format!("{}.exp_avg", p.name), p.shape.clone(), bytes(&p.m)));
            opt.push((
                format!("{}.exp_avg_sq", p.name),
                p.shape.clone(),
                bytes(&p.v),
            ));
        }
        write_safetensors(&dir.join("optimizer.safetensors"), &opt);
        std::fs::write(dir.join("rng_state.bin"), rng.0.to_le_bytes()).expect("write rng");
        std::fs::write(
            dir.join("scheduler.json"),
            serde_json::json!({"last_epoch": step, "base_lrs": [LR]}).to_string(),
        )
        .expect("write scheduler");
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "model_type": "bag-mlp", "vocab_size": VOCAB, "dim": DIM, "hidden": HIDDEN,
                "out": OUT, "lr": LR, "betas": [BETAS.0, BETAS.1], "batch": BATCH
            }))
            .expect("json"),
        )
        .expect("write config");
        std::fs::write(
            dir.join("trainer_state.json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "global_step": step, "epoch": step as f64 / 100.0, "log_history": log_history,
            }))
            .expect("json"),
        )
        .expect("write trainer state");
        println!(
            "checkpoint {ck}: step {step} loss {last_loss:.4} eval_loss {eval_loss:.4} -> {}",
            dir.display()
        );
    }
}

/// Mean squared error over the batch; accumulates gradients when `train`.
fn forward_backward(params: &mut [Param], data: &[(Vec<usize>, Vec<f32>)], train: bool) -> f32 {
    let mut total = 0.0;
    let n = data.len() as f32;
    for (toks, y) in data {
        let mut x = vec![0f32; DIM];
        for &t in toks {
            for d in 0..DIM {
                x[d] += params[0].w[t * DIM + d] / TOKENS as f32;
            }
        }
        let mut h = vec![0f32; HIDDEN];
        for j in 0..HIDDEN {
            let mut s = params[2].w[j];
            for d in 0..DIM {
                s += params[1].w[j * DIM + d] * x[d];
            }
            h[j] = s.max(0.0);
        }
        let mut out = [0f32; OUT];
        for o in 0..OUT {
            let mut s = params[4].w[o];
            for j in 0..HIDDEN {
                s += params[3].w[o * HIDDEN + j] * h[j];
            }
            out[o] = s;
        }
        let mut dout = [0f32; OUT];
        for o in 0..OUT {
            let e = out[o] - y[o];
            total += e * e / OUT as f32;
            dout[o] = 2.0 * e / OUT as f32 / n;
        }
        if !train {
            continue;
        }
        let mut dh = vec![0f32; HIDDEN];
        for o in 0..OUT {
            params[4].g[o] += dout[o];
            for j in 0..HIDDEN {
                params[3].g[o * HIDDEN + j] += dout[o] * h[j];
                dh[j] += dout[o] * params[3].w[o * HIDDEN + j];
            }
        }
        let mut dx = vec![0f32; DIM];
        for j in 0..HIDDEN {
            if h[j] <= 0.0 {
                continue;
            }
            params[2].g[j] += dh[j];
            for d in 0..DIM {
                params[1].g[j * DIM + d] += dh[j] * x[d];
                dx[d] += dh[j] * params[1].w[j * DIM + d];
            }
        }
        for &t in toks {
            for d in 0..DIM {
                params[0].g[t * DIM + d] += dx[d] / TOKENS as f32;
            }
        }
    }
    total / n
}
