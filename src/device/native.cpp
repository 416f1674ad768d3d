// The libtorch calls src/device/mod.rs needs and tch does not bind, with a C interface: how
// libtorch computes in float32 and under autocast — bfloat16 autocast regions (as
// `torch.autocast(device_type, torch.bfloat16)`) and TensorFloat-32 for CUDA matmuls and
// convolutions (as `torch.backends.{cuda.matmul,cudnn.conv}.fp32_precision = "tf32"`), read and
// set separately — and pinned host memory (`Tensor.pin_memory()`). Built by build.rs against the
// pinned libtorch wheel's headers. Only dsno_pin_memory can fail; it returns the error as a
// message (free it with dsno_device_free_string).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace {

at::DeviceType device_type(int cuda) { return cuda != 0 ? at::kCUDA : at::kCPU; }

char* copy(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p != nullptr) {
    std::memcpy(p, s.c_str(), s.size() + 1);
  }
  return p;
}

}  // namespace

extern "C" {

// Enters an autocast region for CPU (cuda = 0) or CUDA (cuda = 1) tensors: bfloat16 autocast when
// `enabled`, autocast off otherwise. Returns the state to give back to dsno_autocast_exit: bit 0
// whether autocast was enabled, the bits above the previous autocast dtype.
int dsno_autocast_enter(int cuda, int enabled) {
  auto d = device_type(cuda);
  int prev = (at::autocast::is_autocast_enabled(d) ? 1 : 0) |
             (static_cast<int>(at::autocast::get_autocast_dtype(d)) << 1);
  at::autocast::set_autocast_enabled(d, enabled != 0);
  at::autocast::set_autocast_dtype(d, at::kBFloat16);
  at::autocast::increment_nesting();
  return prev;
}

// Leaves the region dsno_autocast_enter opened, restoring the state it returned.
void dsno_autocast_exit(int cuda, int prev) {
  auto d = device_type(cuda);
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
  at::autocast::set_autocast_enabled(d, (prev & 1) != 0);
  at::autocast::set_autocast_dtype(d, static_cast<at::ScalarType>(prev >> 1));
}

// Whether autocast is on for CPU (cuda = 0) or CUDA (cuda = 1) tensors.
int dsno_autocast_enabled(int cuda) {
  return at::autocast::is_autocast_enabled(device_type(cuda)) ? 1 : 0;
}

// TensorFloat-32 or IEEE float32 for CUDA matmuls (bit 0 of `state`: TF32) and cuDNN
// convolutions (bit 1).
void dsno_set_tf32(int state) {
  auto p = [](bool on) { return on ? at::Float32Precision::TF32 : at::Float32Precision::IEEE; };
  auto& ctx = at::globalContext();
  ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, p((state & 1) != 0));
  ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, p((state & 2) != 0));
}

// The state dsno_set_tf32 sets: bit 0 when CUDA matmuls use TF32, bit 1 when cuDNN convolutions do.
int dsno_tf32() {
  auto& ctx = at::globalContext();
  auto tf32 = [&](at::Float32Op op) {
    return ctx.float32Precision(at::Float32Backend::CUDA, op) == at::Float32Precision::TF32;
  };
  return (tf32(at::Float32Op::MATMUL) ? 1 : 0) | (tf32(at::Float32Op::CONV) ? 2 : 0);
}

// A page-locked copy of the CPU tensor `t` (tch's `at::Tensor*` handle), as `t.pin_memory()`
// with no device argument (tch's binding passes one, which libtorch deprecates with a warning at
// each call). Returns a new handle, or null with the message in *err.
void* dsno_pin_memory(void* t, char** err) {
  try {
    return new at::Tensor(static_cast<at::Tensor*>(t)->pin_memory());
  } catch (const c10::Error& e) {
    *err = copy(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy(e.what());
  }
  return nullptr;
}

// Frees a message of dsno_pin_memory.
void dsno_device_free_string(char* s) { std::free(s); }

}  // extern "C"
