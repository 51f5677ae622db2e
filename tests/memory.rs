//! What each method keeps alive between forward and backward, measured with the counting
//! allocator. One test in this binary, so no other test allocates concurrently.

use lors::bench::layer::{run, LayerBenchConfig};
use lors::sparsity::Pattern;

#[test]
fn lors_keeps_no_more_than_lora_and_sqft_spp_keep_a_weight() {
    let (out_f, in_f, tokens, rank) = (256, 512, 128, 8);
    let config = LayerBenchConfig {
        in_features: in_f,
        out_features: out_f,
        tokens,
        rank,
        pattern: lors::sparsity::Layout::Unstructured,
        density: 0.5,
        dtype: lors::device::ComputeDtype::F32,
        device: lors::device::DeviceSpec::Cpu,
        memory: "heap".into(),
        runs: 2,
        threads: 1,
        seed: 3,
    };
    let report = run(
        &config,
        Pattern::Unstructured { sparsity: 0.5 },
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
        true,
    )
    .unwrap();
    // The f32 run agrees with the f64 reference on every method (what `--verify` checks on
    // a GPU), well inside the tolerance.
    assert_eq!(report.verify.len(), 5);
    for v in &report.verify {
        for r in [v.y, v.grad_x, v.grad_a, v.grad_b] {
            assert!(r < v.tolerance / 10.0, "{v:?}");
        }
    }
    let kept = |m: &str| {
        report
            .results
            .iter()
            .find(|r| r.method == m)
            .unwrap()
            .kept_bytes
    };
    let weight = out_f * in_f * 4;
    let rank_r = tokens * rank * 4;
    for m in ["lors", "lors-exact"] {
        assert!(
            kept(m) <= kept("lora"),
            "{m} keeps {} B, lora {} B",
            kept(m),
            kept("lora")
        );
        // Graph bookkeeping only: less than one rank-r activation.
        assert!(kept(m) < rank_r, "{m} keeps {} B", kept(m));
    }
    for m in ["sqft", "spp"] {
        assert!(
            kept(m) >= weight,
            "{m} keeps {} B, less than one out x in weight ({weight} B)",
            kept(m)
        );
    }
}
