//! Schedules: exact identities, derivatives against finite differences, presets, grids.
use dsno::schedule::{ddpm_alpha_bars, grid_through, parse_output_times, Schedule};

const ALL: [fn() -> Schedule; 3] = [Schedule::vp_cosine, Schedule::vp_linear, Schedule::edm];

fn interior_times(s: &Schedule) -> Vec<f64> {
    let (lo, hi) = s.t_range();
    (1..40).map(|i| lo + (hi - lo) * i as f64 / 40.0).collect()
}

#[test]
fn lambda_alpha_sigma_are_consistent() {
    for make in ALL {
        let s = make();
        for t in interior_times(&s) {
            let (a, sg, l) = (s.alpha(t), s.sigma(t), s.lambda(t));
            assert!(
                ((a * a / (sg * sg)).ln() - l).abs() < 1e-9 * l.abs().max(1.0),
                "{s:?} t={t}"
            );
            if s.is_variance_preserving() {
                assert!((a * a + sg * sg - 1.0).abs() < 1e-12, "{s:?} t={t}");
            }
            let back = s.t_of_lambda(l);
            assert!(
                (back - t).abs() < 1e-9 * t.max(1.0),
                "{s:?}: t={t} → λ={l} → {back}"
            );
        }
    }
}

#[test]
fn derivatives_match_finite_differences() {
    for make in ALL {
        let s = make();
        for t in interior_times(&s) {
            let h = 1e-6 * s.t_range().1;
            let fd = (s.lambda(t + h) - s.lambda(t - h)) / (2.0 * h);
            let an = s.dlambda_dt(t);
            assert!(
                (fd - an).abs() < 1e-5 * an.abs().max(1.0),
                "{s:?} dλ/dt at {t}: {an} vs {fd}"
            );
            let fd = (s.alpha(t + h).ln() - s.alpha(t - h).ln()) / (2.0 * h);
            let an = s.dlog_alpha_dt(t);
            assert!(
                (fd - an).abs() < 1e-5 * an.abs().max(1.0),
                "{s:?} dlnα/dt at {t}: {an} vs {fd}"
            );
        }
    }
}

#[test]
fn cosine_schedule_spans_its_log_snr_range() {
    let s = Schedule::vp_cosine();
    assert!((s.lambda(0.0) - 20.0).abs() < 1e-9);
    assert!((s.lambda(1.0) + 20.0).abs() < 1e-9);
    // t_in = atan(e^{−λ/2})/(π/2) recovers t up to the tiny clipping offset of λ ∈ [−20, 20].
    for t in [0.0, 0.1, 0.5, 0.9, 1.0] {
        assert!(
            (s.t_input(t) - t).abs() < 1e-4,
            "t_in({t}) = {}",
            s.t_input(t)
        );
    }
}

#[test]
fn linear_schedule_is_the_continuous_form_of_ddpm() {
    let s = Schedule::vp_linear();
    let bars = ddpm_alpha_bars(1e-4, 0.02, 1000);
    for n in [100usize, 250, 500, 750, 1000] {
        let cont = (s.alpha(n as f64 / 1000.0)).powi(2).ln();
        let disc = bars[n - 1].ln();
        assert!(
            ((cont - disc) / disc).abs() < 0.02,
            "n={n}: continuous ln ᾱ {cont} vs discrete {disc}"
        );
    }
    assert_eq!(s.sigma(0.0), 0.0);
    assert_eq!(s.lambda(0.0), f64::INFINITY);
}

#[test]
fn output_time_presets() {
    assert_eq!(
        parse_output_times("quad:4").unwrap()[..],
        [0.5625, 0.25, 0.0625, 0.0]
    );
    assert_eq!(
        parse_output_times("uniform:4").unwrap()[..],
        [0.75, 0.5, 0.25, 0.0]
    );
    assert_eq!(
        parse_output_times("0.8, 0.3,0").unwrap()[..],
        [0.8, 0.3, 0.0]
    );
    for bad in ["quad:0", "quad:x", "0.2,0.5", "0.5,0.5", "1.5,0", "a,b", ""] {
        let e = parse_output_times(bad).unwrap_err().to_string();
        assert!(e.contains("output times"), "{bad}: {e}");
    }
}

#[test]
fn karras_grid_has_edm_shape() {
    let g = Schedule::karras_grid(0.002, 80.0, 7.0, 18);
    assert_eq!(g.len(), 19);
    assert!((g[0] - 80.0).abs() < 1e-12 && (g[17] - 0.002).abs() < 1e-12 && g[18] == 0.0);
    assert!(g.windows(2).all(|w| w[1] < w[0]));
}

#[test]
fn grid_through_contains_every_output_time() {
    let outs = parse_output_times("quad:4").unwrap();
    for n in [4usize, 7, 16, 50, 512] {
        let g = grid_through(1.0, &outs, n).unwrap();
        assert_eq!(g.len(), n + 1);
        assert!(g.windows(2).all(|w| w[1] < w[0]));
        for t in &outs {
            assert!(
                g.iter().any(|x| (x - t).abs() < 1e-12),
                "n={n}: {t} not in {g:?}"
            );
        }
    }
    // uniform in t when the output times fall on the uniform grid
    let g = grid_through(1.0, &outs, 16).unwrap();
    for (i, x) in g.iter().enumerate() {
        assert!((x - (1.0 - i as f64 / 16.0)).abs() < 1e-12);
    }
    assert!(grid_through(1.0, &outs, 3).is_err());
}
