//! The summary's totals match the papers/torchvision, and its shapes match a real forward pass.

use burn::tensor::{Device, Tensor};
use mobilenet::{Arch, MobileNet, ModelConfig};

#[test]
fn totals_match_torchvision_at_224() {
    let device = Device::flex();
    let expected = [
        (Arch::V1, 4_231_976usize, 568_740_352u64),
        (Arch::V2, 3_504_872, 300_774_272),
        (Arch::V3Large, 5_483_032, 216_589_760),
        (Arch::V3Small, 2_542_856, 56_510_400),
    ];
    for (arch, params, macs) in expected {
        let model = MobileNet::new(&ModelConfig::new(arch), &device).unwrap();
        let trace = model.summary(224);
        assert_eq!(trace.total_params(), params, "{arch} params");
        assert_eq!(trace.total_macs(), macs, "{arch} MACs");
        // burn's own count includes BN running statistics; ours counts trainable tensors.
        let buffers: usize = trace.rows.iter().filter(|r| r.kind == "BatchNorm2d").map(|r| r.params).sum();
        assert_eq!(burn::module::Module::num_params(&model), params + buffers, "{arch} num_params");
    }
}

#[test]
fn traced_shapes_match_forward_at_odd_sizes() {
    let device = Device::flex();
    for arch in Arch::ALL {
        for size in [32usize, 97, 161] {
            let config = ModelConfig::new(arch).with_width_mult(0.25).with_num_classes(7);
            let model = MobileNet::new(&config, &device).unwrap().eval_mode();
            let trace = model.summary(size);
            let x = Tensor::<4>::zeros([1, 3, size, size], &device);
            let outs = model.forward_intermediates(x.clone());
            // Every top-level `features.i` output shape equals the trace's last row for it.
            for (i, out) in outs.iter().enumerate() {
                let prefix = format!("features.{i}");
                let row = trace
                    .rows
                    .iter()
                    .rfind(|r| {
                        r.path == prefix
                            || r.path.starts_with(&format!("{prefix}."))
                            || r.path.starts_with(&format!("{prefix} "))
                    })
                    .unwrap();
                assert_eq!(out.dims()[1..].to_vec(), row.output_shape, "{arch} {size} {prefix}");
            }
            assert_eq!(model.forward(x).dims(), [1, 7]);
            assert_eq!(trace.rows.last().unwrap().output_shape, vec![7]);
        }
    }
}

#[test]
fn rendered_table_has_total_lines() {
    let device = Device::flex();
    let model = MobileNet::new(&ModelConfig::new(Arch::V3Small), &device).unwrap();
    let text = model.summary(224).render("t");
    assert!(text.lines().any(|l| l == "params: 2542856"), "{text}");
    assert!(text.lines().any(|l| l == "MACs: 56510400"), "{text}");
    assert!(text.contains("features.1.block.1") && text.contains("SqueezeExcitation"));
}

#[test]
fn make_divisible_matches_torchvision() {
    use mobilenet::models::blocks::make_divisible;
    // Values computed with torchvision's _make_divisible.
    assert_eq!(make_divisible(32.0 * 0.5, 8), 16);
    assert_eq!(make_divisible(24.0 * 0.35, 8), 8);
    assert_eq!(make_divisible(72.0 * 0.75, 8), 56);
    assert_eq!(make_divisible(1280.0 * 1.4, 8), 1792);
    assert_eq!(make_divisible(20.0, 8), 24);
    assert_eq!(make_divisible(3.0, 8), 8);
    assert_eq!(make_divisible(91.0, 8), 88);
}

#[test]
fn instances_do_not_share_weights() {
    // The write-up built V3's blocks once at import time, so all models shared them.
    let device = Device::flex();
    let config = ModelConfig::new(Arch::V3Small).with_width_mult(0.25);
    let a = MobileNet::new(&config, &device).unwrap();
    let b = MobileNet::new(&config, &device).unwrap();
    let (MobileNet::V3(a), MobileNet::V3(b)) = (&a, &b) else { unreachable!() };
    let wa = a.features.blocks[2].block.depthwise.conv.weight.val().into_data();
    let wb = b.features.blocks[2].block.depthwise.conv.weight.val().into_data();
    assert_ne!(wa, wb);
}

#[test]
fn initialisation_follows_torchvision() {
    // kaiming_normal(fan_out): std = sqrt(2 / (out * k * k)); Linear N(0, 0.01); BN ones/zeros.
    let device = Device::flex();
    let model = MobileNet::new(&ModelConfig::new(Arch::V2), &device).unwrap();
    let MobileNet::V2(m) = &model else { unreachable!() };
    let w = m.features.last.conv.weight.val(); // 1280 x 320 x 1 x 1
    let v: Vec<f32> = w.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    let expected = (2.0f32 / 1280.0).sqrt();
    assert!((std / expected - 1.0).abs() < 0.02, "conv std {std} vs {expected}");
    let l: Vec<f32> = m.classifier.linear.weight.val().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let lstd = (l.iter().map(|x| x * x).sum::<f32>() / l.len() as f32).sqrt();
    assert!((lstd / 0.01 - 1.0).abs() < 0.02, "linear std {lstd}");
    let g: Vec<f32> = m.features.stem.norm.weight.val().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    assert!(g.iter().all(|&x| x == 1.0));
}
