//! Choosing where tensors live — `auto` (CUDA when libtorch sees a GPU, else CPU), `cpu`,
//! `cuda[:N]` — and how they compute there ([`Precision`]: float32, TensorFloat-32 or bfloat16
//! autocast, switched through `native.cpp`), and copying to a device without waiting for it
//! ([`upload`]).
use crate::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr};
use tch::{Device, Tensor};

extern "C" {
    fn dsno_autocast_enter(cuda: c_int, enabled: c_int) -> c_int;
    fn dsno_autocast_exit(cuda: c_int, prev: c_int);
    fn dsno_autocast_enabled(cuda: c_int) -> c_int;
    fn dsno_set_tf32(state: c_int);
    fn dsno_tf32() -> c_int;
    fn dsno_pin_memory(t: *mut c_void, err: *mut *mut c_char) -> *mut c_void;
    fn dsno_device_free_string(s: *mut c_char);
}

crate::util::names::named_enum! {
    /// How training computes (the `--precision` flag).
    ///
    /// - `Fp32`: float32, with libtorch's defaults, which are PyTorch's: IEEE float32 matmuls, and
    ///   cuDNN convolutions free to use TensorFloat-32 on GPUs that have it (the default).
    /// - `Tf32`: float32 tensors, with CUDA matmuls and convolutions in TensorFloat-32 (10-bit
    ///   mantissa products, float32 accumulation); the same as `Fp32` on the CPU.
    /// - `Bf16`: `Tf32`, plus the network's forward pass under bfloat16 autocast (PyTorch's
    ///   `torch.autocast(device, torch.bfloat16)`: convolutions and matmuls in bfloat16, norms,
    ///   softmax and reductions in float32), except TimeConv, whose spectral mixing stays float32
    ///   ([`full_precision`]); weights, gradients, losses, the optimiser and the EMA stay float32.
    ///   bfloat16 has float32's range, so no loss scaling is needed.
    pub enum Precision ("precision") {
        /// IEEE float32 throughout.
        Fp32 = "fp32" | "float32",
        /// CUDA matmuls and convolutions in TensorFloat-32.
        Tf32 = "tf32",
        /// tf32, plus the forward pass under bfloat16 autocast.
        Bf16 = "bf16" | "bfloat16",
    }
}

// the enum is declared by `named_enum!`, which derives no `Default`
#[allow(clippy::derivable_impls)]
impl Default for Precision {
    fn default() -> Self {
        Precision::Fp32
    }
}

impl Precision {
    /// Parses `fp32`, `tf32` or `bf16` ([`Precision::from_name`]).
    pub fn parse(name: &str) -> Result<Self> {
        Self::from_name(name)
    }

    /// Sets the process-wide float32 mode of CUDA matmuls and convolutions for this precision:
    /// TensorFloat-32 for both with `Tf32` and `Bf16`; `Fp32` leaves them as they are.
    pub fn apply(self) {
        if self != Precision::Fp32 {
            set_tf32(Tf32 {
                matmul: true,
                conv: true,
            });
        }
    }

    /// An autocast region for the forward passes on `device`: bfloat16 for `Bf16`, nothing for
    /// the others. Autocast is per thread; leave the region (drop the guard) before `backward`.
    pub fn autocast(self, device: Device) -> Autocast {
        match self {
            Precision::Bf16 => Autocast::enter(device, true),
            _ => Autocast::none(),
        }
    }
}

/// Where CUDA float32 work may use TensorFloat-32 (true) instead of IEEE float32 (false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tf32 {
    /// Matmuls (cuBLAS); libtorch's default: false.
    pub matmul: bool,
    /// cuDNN convolutions; libtorch's default: true.
    pub conv: bool,
}

/// Sets the process-wide TensorFloat-32 switches of CUDA matmuls and convolutions.
pub fn set_tf32(t: Tf32) {
    // SAFETY: sets two fields of libtorch's global context; cannot fail.
    unsafe { dsno_set_tf32(c_int::from(t.matmul) | (c_int::from(t.conv) << 1)) }
}

/// The TensorFloat-32 switches of CUDA matmuls and convolutions.
pub fn tf32() -> Tf32 {
    // SAFETY: reads libtorch's global context.
    let s = unsafe { dsno_tf32() };
    Tf32 {
        matmul: s & 1 != 0,
        conv: s & 2 != 0,
    }
}

/// Whether autocast is on for tensors on `device` in this thread.
pub fn autocast_enabled(device: Device) -> bool {
    // SAFETY: reads libtorch's thread-local autocast state.
    unsafe { dsno_autocast_enabled(c_int::from(device.is_cuda())) != 0 }
}

/// An autocast region of this thread; leaving it (drop) restores the state before it.
#[must_use = "the region ends when the guard is dropped"]
pub struct Autocast {
    /// (device is CUDA, previous state), or None for a region that changed nothing.
    state: Option<(c_int, c_int)>,
    /// Not `Send`: the state it restores is libtorch's thread-local autocast state, so the guard
    /// must be dropped on the thread that entered the region.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Autocast {
    /// A region that changes nothing.
    fn none() -> Self {
        Autocast {
            state: None,
            _thread: std::marker::PhantomData,
        }
    }

    fn enter(device: Device, enabled: bool) -> Self {
        let cuda = c_int::from(device.is_cuda());
        // SAFETY: sets libtorch's thread-local autocast state; the guard restores it.
        let prev = unsafe { dsno_autocast_enter(cuda, c_int::from(enabled)) };
        Autocast {
            state: Some((cuda, prev)),
            _thread: std::marker::PhantomData,
        }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        if let Some((cuda, prev)) = self.state {
            // SAFETY: restores the state `enter` returned, on the thread that entered.
            unsafe { dsno_autocast_exit(cuda, prev) }
        }
    }
}

/// A region with autocast off for tensors on `device` (for computations that must stay float32
/// inside an autocast forward pass, as TimeConv's spectral mixing); nothing when autocast is off.
pub fn full_precision(device: Device) -> Autocast {
    match autocast_enabled(device) {
        true => Autocast::enter(device, false),
        false => Autocast::none(),
    }
}

/// `t` on `device` without making the host wait: a CPU tensor bound for CUDA is copied into
/// pinned memory and sent asynchronously (PyTorch's `pin_memory()` + `non_blocking=True`; the
/// caching host allocator keeps the pinned buffer until the copy has run). A plain copy from
/// pageable memory would synchronise the stream — a stall per training step. Where pinning
/// fails (no CUDA driver), the plain copy.
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    match (t.device(), device) {
        (Device::Cpu, Device::Cuda(_)) => match pin(t) {
            Ok(p) => p.to_device_(device, t.kind(), true, false),
            Err(_) => t.to_device(device),
        },
        _ => t.to_device(device),
    }
}

/// A page-locked copy of the CPU tensor `t`.
pub fn pin(t: &Tensor) -> Result<Tensor> {
    let mut err: *mut c_char = std::ptr::null_mut();
    let mut src = t.shallow_clone();
    // SAFETY: `src` is a live tensor handle for the call; the result is a new handle (owned by
    // the returned Tensor) or null with a malloc'd message, which is freed here.
    unsafe {
        let p = dsno_pin_memory(src.as_mut_ptr() as *mut c_void, &mut err);
        if p.is_null() {
            let msg = match err.is_null() {
                true => "unknown error".to_string(),
                false => {
                    let m = CStr::from_ptr(err).to_string_lossy().into_owned();
                    dsno_device_free_string(err);
                    m
                }
            };
            return Err(Error::invalid(format!("cannot pin host memory: {msg}")));
        }
        Ok(Tensor::from_ptr(p as *mut _))
    }
}

/// [`upload`] of a slice (row indices, per-sample coefficients).
pub fn upload_slice<T: tch::kind::Element>(v: &[T], device: Device) -> Tensor {
    upload(&Tensor::from_slice(v), device)
}

/// Parses a device name: `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => cuda(0),
        _ => match name.strip_prefix("cuda:") {
            Some(n) => {
                let i = n.parse::<usize>().map_err(|_| {
                    Error::invalid(format!(
                        "device `{name}`: expected cuda:N with N a GPU index"
                    ))
                })?;
                cuda(i)
            }
            None => Err(Error::invalid(format!(
                "unknown device `{name}`: expected auto, cpu, cuda or cuda:N"
            ))),
        },
    }
}

fn cuda(i: usize) -> Result<Device> {
    let n = tch::Cuda::device_count() as usize;
    if i >= n {
        return Err(Error::invalid(format!(
            "device cuda:{i} requested but libtorch sees {n} CUDA device(s)"
        )));
    }
    Ok(Device::Cuda(i))
}

/// A short human-readable description of a device.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        d => format!("{d:?}"),
    }
}

/// Keeps freed host memory inside the process for reuse, instead of returning it to the
/// kernel after every tensor: glibc serves allocations above its mmap threshold (at most
/// 32 MiB) with fresh `mmap` pages, and every first touch of such a page is a page fault
/// that the kernel pays for by zeroing it. A DSNO pass over a batch of 250 MNIST images
/// allocates activations of ~50 MiB (B·M images at 16–64 channels), so on the CPU it spent a
/// third of its time in page faults (`dsno bench engine`, docs/RESULTS.md §2). Turning off
/// `mmap` for the heap and raising the trim threshold to 2 GiB makes the heap grow once to
/// the peak and be reused. The cost: the process holds on to its peak heap until it exits.
/// Call it first in `main`; on targets other than glibc it does nothing and returns false.
pub fn keep_freed_host_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_MAX: c_int = -4;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        // SAFETY: mallopt only changes glibc's allocator tunables; both values are in range.
        unsafe { mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
