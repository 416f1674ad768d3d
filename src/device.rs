//! Choosing where tensors live: `auto` (CUDA when libtorch sees a GPU, else CPU), `cpu`, `cuda[:N]`.
use crate::{Error, Result};
use tch::Device;

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
