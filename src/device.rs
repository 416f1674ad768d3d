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
