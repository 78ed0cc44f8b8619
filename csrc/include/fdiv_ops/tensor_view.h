// Tensors as the bindings receive them, read through DLPack without linking any framework, and the metadata
// checks every binding runs on them before a kernel does. Only binding code includes this (it needs pybind11).
//
// Two ways in, both without copies or stream synchronisation: the tensor itself, read through the DLPack C
// exchange table its type publishes (torch >= 2.10: no allocation at all), or a capsule from
// torch.utils.dlpack.to_dlpack (any torch). A capsule is borrowed, never consumed: the binding reads it while
// Python holds it (the call's argument) and leaves its name and deleter alone. Checks read metadata only
// (dtype, shape, strides, device): no data, no host synchronisation.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <limits>
#include <string>

#include "dtype.h"

namespace fdiv_ops::binding {

namespace py = pybind11;

// The DLPack ABI (v0.x "dltensor" and v1.x "dltensor_versioned" capsules), as the DLPack specification
// lays it out; only the fields read here.
namespace dlpack {
enum DeviceType : int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3, kCUDAManaged = 13 };
enum TypeCode : uint8_t { kInt = 0, kUInt = 1, kFloat = 2, kBfloat = 4, kComplex = 5, kBool = 6 };
struct Device {
  int32_t device_type;
  int32_t device_id;
};
struct DataType {
  uint8_t code, bits;
  uint16_t lanes;
};
struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  // may be null before DLPack 1.2: compact row-major
  uint64_t byte_offset;
};
struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor*);
};
struct Version {
  uint32_t major, minor;
};
struct ManagedTensorVersioned {
  Version version;
  void* manager_ctx;
  void (*deleter)(ManagedTensorVersioned*);
  uint64_t flags;
  Tensor dl_tensor;
};
// The C exchange table (DLPack >= 1.3) a tensor type publishes as __dlpack_c_exchange_api__ (torch >= 2.10):
// a borrowed view of a tensor with no allocation and no synchronisation, and the framework's current stream.
struct ExchangeAPIHeader {
  Version version;
  ExchangeAPIHeader* prev_api;
};
struct ExchangeAPI {
  ExchangeAPIHeader header;
  void* managed_tensor_allocator;
  void* managed_tensor_from_py_object_no_sync;
  void* managed_tensor_to_py_object_no_sync;
  int (*dltensor_from_py_object_no_sync)(void* py_object, Tensor* out);  // may be null
  int (*current_work_stream)(int32_t device_type, int32_t device_id, void** out_stream);
};
}  // namespace dlpack

// The exchange table of obj's type, or null when it publishes none usable here. A few types are cached (a
// call sees torch.Tensor and nn.Parameter); the tables live as long as the process, by the DLPack contract.
inline const dlpack::ExchangeAPI* exchange_api(PyObject* obj) {
  struct Entry {
    PyTypeObject* type;
    const dlpack::ExchangeAPI* api;
  };
  static Entry cache[4] = {};
  static int next = 0;
  PyTypeObject* type = Py_TYPE(obj);
  for (const Entry& e : cache)
    if (e.type == type) return e.api;
  const dlpack::ExchangeAPI* api = nullptr;
  PyObject* attr = PyObject_GetAttrString(reinterpret_cast<PyObject*>(type), "__dlpack_c_exchange_api__");
  if (attr == nullptr) {
    PyErr_Clear();
  } else {
    if (PyCapsule_IsValid(attr, "dlpack_exchange_api"))
      api = static_cast<const dlpack::ExchangeAPI*>(PyCapsule_GetPointer(attr, "dlpack_exchange_api"));
    Py_DECREF(attr);
    if (api != nullptr && (api->header.version.major != 1 || api->dltensor_from_py_object_no_sync == nullptr))
      api = nullptr;
  }
  cache[next] = Entry{type, api};
  next = (next + 1) % 4;
  return api;
}

// Where a kernel runs: the CPU, or one CUDA device.
struct Device {
  bool cuda = false;
  int index = 0;
  bool operator==(const Device& o) const { return cuda == o.cuda && (!cuda || index == o.index); }
  std::string str() const { return cuda ? "cuda:" + std::to_string(index) : std::string("cpu"); }
};

// The element types the kernels take; `other` is anything else (named in errors by its DLPack code).
enum class Elem { float32, float64, bfloat16, float16, int64, other };

inline const char* elem_name(Elem e) {
  switch (e) {
    case Elem::float32:
      return "float32";
    case Elem::float64:
      return "float64";
    case Elem::bfloat16:
      return "bfloat16";
    case Elem::float16:
      return "float16";
    case Elem::int64:
      return "int64";
    case Elem::other:
      break;
  }
  return "other";
}

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::float32:
      return "float32";
    case DType::float64:
      return "float64";
    case DType::bfloat16:
      return "bfloat16";
    case DType::float16:
      return "float16";
  }
  return "?";
}

// One tensor argument of a binding: its name (for errors) and its DLPack metadata.
struct TensorView {
  const char* op = "";
  const char* name = "";
  void* data = nullptr;
  Device device;
  int ndim = 0;
  const int64_t* shape = nullptr;
  const int64_t* strides = nullptr;
  dlpack::DataType dl_dtype{};
  Elem elem = Elem::other;
  const dlpack::ExchangeAPI* api = nullptr;  // set when the tensor came through its type's exchange table

  int64_t size(int d) const { return shape[d]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }
  // Row-major dense (a size-1 dimension's stride does not matter), as torch's is_contiguous().
  bool is_contiguous() const {
    if (strides == nullptr) return true;
    int64_t expected = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (shape[d] == 1) continue;
      if (strides[d] != expected) return numel() == 0;
      expected *= shape[d];
    }
    return true;
  }
  int64_t stride(int d) const {
    if (strides != nullptr) return strides[d];
    int64_t s = 1;
    for (int e = ndim - 1; e > d; --e) s *= shape[e];
    return s;
  }
  bool is_float() const { return elem != Elem::int64 && elem != Elem::other; }
  DType dtype() const {  // only after is_float()
    switch (elem) {
      case Elem::float64:
        return DType::float64;
      case Elem::bfloat16:
        return DType::bfloat16;
      case Elem::float16:
        return DType::float16;
      default:
        return DType::float32;
    }
  }
  std::string dtype_str() const;
  std::string shape_str() const {
    std::string s = "(";
    for (int d = 0; d < ndim; ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
    return s + (ndim == 1 ? ",)" : ")");
  }
};

inline std::string TensorView::dtype_str() const {
  if (elem != Elem::other) return elem_name(elem);
  const int bits = dl_dtype.bits;
  std::string lanes = dl_dtype.lanes == 1 ? "" : "x" + std::to_string(dl_dtype.lanes);
  switch (dl_dtype.code) {
    case dlpack::kInt:
      return "int" + std::to_string(bits) + lanes;
    case dlpack::kUInt:
      return "uint" + std::to_string(bits) + lanes;
    case dlpack::kFloat:
      return "float" + std::to_string(bits) + lanes;
    case dlpack::kComplex:
      return "complex" + std::to_string(bits) + lanes;
    case dlpack::kBool:
      return "bool";
    default:
      return "DLPack type code " + std::to_string(dl_dtype.code) + " of " + std::to_string(bits) + " bits";
  }
}

// "fdiv_ops::<op>: " + message, as a Python ValueError (shape, device, layout, value) or TypeError (dtype).
[[noreturn]] inline void value_error(const char* op, const std::string& message) {
  throw py::value_error(std::string("fdiv_ops::") + op + ": " + message);
}
[[noreturn]] inline void type_error(const char* op, const std::string& message) {
  throw py::type_error(std::string("fdiv_ops::") + op + ": " + message);
}

// The view of a tensor argument: a framework tensor whose type publishes the DLPack C exchange table (read in
// place), or a DLPack capsule from torch.utils.dlpack.to_dlpack (older torch); a TypeError naming the argument
// for anything else.
inline TensorView tensor_arg(const char* op, const char* name, py::handle obj) {
  dlpack::Tensor exchanged;
  const dlpack::Tensor* t = nullptr;
  const dlpack::ExchangeAPI* api = nullptr;
  if (obj.is_none()) type_error(op, std::string(name) + " must be a tensor, got None");
  if (!PyCapsule_CheckExact(obj.ptr())) {
    api = exchange_api(obj.ptr());
    if (api == nullptr)
      type_error(op, std::string(name) + " must be a tensor (or a DLPack capsule), got " +
                         std::string(Py_TYPE(obj.ptr())->tp_name));
    if (api->dltensor_from_py_object_no_sync(obj.ptr(), &exchanged) != 0) {
      py::error_already_set err;
      type_error(op, std::string(name) + " cannot be read as a DLPack tensor: " + err.what());
    }
    t = &exchanged;
  } else {
    const char* capsule_name = PyCapsule_GetName(obj.ptr());
    if (capsule_name != nullptr && std::string(capsule_name) == "dltensor") {
      t = &static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(obj.ptr(), capsule_name))->dl_tensor;
    } else if (capsule_name != nullptr && std::string(capsule_name) == "dltensor_versioned") {
      auto* v = static_cast<dlpack::ManagedTensorVersioned*>(PyCapsule_GetPointer(obj.ptr(), capsule_name));
      if (v->version.major != 1) type_error(op, std::string(name) + ": unsupported DLPack major version");
      t = &v->dl_tensor;
    } else {
      type_error(op, std::string(name) + " must be an unused DLPack capsule (\"dltensor\"), got one named " +
                         (capsule_name ? capsule_name : "(null)"));
    }
  }
  TensorView v;
  v.op = op;
  v.name = name;
  v.api = api;
  v.data = static_cast<char*>(t->data) + t->byte_offset;
  v.ndim = t->ndim;
  v.shape = t->shape;
  v.strides = t->strides;
  v.dl_dtype = t->dtype;
  if (t->device.device_type == dlpack::kCPU || t->device.device_type == dlpack::kCUDAHost) {
    v.device = Device{false, 0};
  } else if (t->device.device_type == dlpack::kCUDA) {
    v.device = Device{true, t->device.device_id};
  } else {
    value_error(op, std::string(name) + " must be on a CPU or CUDA device, got DLPack device type " +
                        std::to_string(t->device.device_type));
  }
  const dlpack::DataType d = t->dtype;
  if (d.lanes == 1) {
    if (d.code == dlpack::kFloat && d.bits == 32) v.elem = Elem::float32;
    if (d.code == dlpack::kFloat && d.bits == 64) v.elem = Elem::float64;
    if (d.code == dlpack::kFloat && d.bits == 16) v.elem = Elem::float16;
    if (d.code == dlpack::kBfloat && d.bits == 16) v.elem = Elem::bfloat16;
    if (d.code == dlpack::kInt && d.bits == 64) v.elem = Elem::int64;
  }
  return v;
}

// Whether an optional tensor argument was given (None is "not given").
inline bool given(py::handle obj) { return !obj.is_none(); }

// ---- the checks; each names the op and the argument ------------------------------------------------------

inline DType expect_float(const TensorView& t) {
  if (!t.is_float())
    type_error(t.op, std::string(t.name) + " must have a floating dtype (float32, float64, bfloat16, float16), got " +
                         t.dtype_str());
  return t.dtype();
}

inline void expect_dtype(const TensorView& t, DType want, const char* why) {
  if (!t.is_float() || t.dtype() != want)
    type_error(t.op, std::string(t.name) + " must be " + dtype_name(want) + " (" + why + "), got " + t.dtype_str());
}

inline void expect_one_of(const TensorView& t, std::initializer_list<DType> allowed, const char* what) {
  if (t.is_float())
    for (DType d : allowed)
      if (t.dtype() == d) return;
  type_error(t.op, std::string(t.name) + " must be " + what + ", got " + t.dtype_str());
}

inline void expect_int64(const TensorView& t) {
  if (t.elem != Elem::int64) type_error(t.op, std::string(t.name) + " must be int64, got " + t.dtype_str());
}

// Shape (d0, d1, ...) exactly; `what` says what the dimensions are, e.g. "(rows, V) = ".
inline void expect_shape(const TensorView& t, std::initializer_list<int64_t> dims, const char* what = "") {
  bool ok = t.ndim == static_cast<int>(dims.size());
  int d = 0;
  for (int64_t want : dims) ok = ok && t.shape[d++] == want;
  if (ok) return;
  std::string want = "(";
  d = 0;
  for (int64_t w : dims) want += (d++ ? ", " : "") + std::to_string(w);
  want += dims.size() == 1 ? ",)" : ")";
  value_error(t.op, std::string(t.name) + " must have shape " + what + want + ", got " + t.shape_str());
}

inline void expect_ndim(const TensorView& t, int ndim, const char* what) {
  if (t.ndim != ndim)
    value_error(t.op, std::string(t.name) + " must have " + std::to_string(ndim) + " dimensions " + what + ", got " +
                          t.shape_str());
}

inline void expect_contiguous(const TensorView& t) {
  if (!t.is_contiguous())
    value_error(t.op, std::string(t.name) + " must be contiguous (row-major, dense), got shape " + t.shape_str() +
                          " with non-dense strides");
}

inline void expect_same_device(const TensorView& t, const TensorView& ref) {
  if (!(t.device == ref.device))
    value_error(t.op, std::string(t.name) + " must be on the device of " + ref.name + " (" + ref.device.str() +
                          "), got " + t.device.str());
}

// The usual contract of a kernel buffer: dtype, exact shape, dense, on ref's device.
inline void expect_buffer(const TensorView& t, DType dtype, const char* why, std::initializer_list<int64_t> dims,
                          const TensorView& ref, const char* what = "") {
  expect_dtype(t, dtype, why);
  expect_shape(t, dims, what);
  expect_contiguous(t);
  expect_same_device(t, ref);
}

inline std::string number_str(double value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", value);
  return buf;
}

// Scalars, by comparison only (NaN fails every one of them).
inline void expect_finite_positive(const char* op, const char* name, double value) {
  if (!(value > 0.0 && value < std::numeric_limits<double>::infinity()))
    value_error(op, std::string(name) + " must be a finite number > 0, got " + number_str(value));
}
inline void expect_finite_non_negative(const char* op, const char* name, double value) {
  if (!(value >= 0.0 && value < std::numeric_limits<double>::infinity()))
    value_error(op, std::string(name) + " must be a finite number >= 0, got " + number_str(value));
}

inline DType acc_of(DType d) { return d == DType::float64 ? DType::float64 : DType::float32; }

}  // namespace fdiv_ops::binding
