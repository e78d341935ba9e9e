// Product pooling: the same-channel product over non-overlapping windows
// (q-CNN eq. 8), forward and backward, linear and log domain.
//
// Layouts (C-contiguous, channels last):
//   chain: x (batch, sites, channels), windows of `window` consecutive sites,
//          out (batch, sites / window, channels);
//   grid:  x (batch, height, width, channels), 2x2 windows,
//          out (batch, height / 2, width / 2, channels).
//
// One thread per output element, the channel index fastest, so a warp reads and writes
// consecutive addresses for every member of a window (coalesced over channels).
// Grid-stride loops with 64-bit indices: a 1024x1024 image with many channels exceeds 2^31.
//
// Entries are extern "C" and named <op>_<layout>_<dtype> so CuPy finds them without name
// mangling; each is a one-line instance of a templated __device__ body.

namespace fasttn {

typedef long long index_t;

// Offset in x of member k of the window that produces output element o.
struct Chain {
    index_t channels;
    index_t window;
    __device__ int members() const { return static_cast<int>(window); }
    __device__ index_t offset(index_t o, int k) const {
        // o = (b * sites_out + p) * channels + c, and the window starts at input row
        // b * sites + p * window = (b * sites_out + p) * window.
        const index_t c = o % channels;
        const index_t row = o / channels;
        return (row * window + k) * channels + c;
    }
};

struct Grid {
    index_t channels;
    index_t width_out;
    __device__ int members() const { return 4; }
    __device__ index_t offset(index_t o, int k) const {
        // o = ((b * h_out + i) * w_out + j) * channels + c; members in row-major order
        // (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1), as the NumPy reference.
        const index_t c = o % channels;
        const index_t r = o / channels;
        const index_t j = r % width_out;
        const index_t bi = r / width_out;  // b * h_out + i
        const index_t in_row = 2 * bi + (k >> 1);
        return (in_row * (2 * width_out) + 2 * j + (k & 1)) * channels + c;
    }
};

__device__ inline index_t first_index() {
    return static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ inline index_t stride() {
    return static_cast<index_t>(gridDim.x) * blockDim.x;
}

template <typename T, typename Layout>
__device__ void pool_forward(const T* __restrict__ x, T* __restrict__ out, index_t n_out,
                             Layout layout) {
    const int n = layout.members();
    for (index_t o = first_index(); o < n_out; o += stride()) {
        T acc = x[layout.offset(o, 0)];
        for (int k = 1; k < n; ++k) acc *= x[layout.offset(o, k)];
        out[o] = acc;
    }
}

// d/dx_k prod_m x_m = prod_{m != k} x_m, from a prefix product written into grad and a
// suffix product carried back: O(window) per output and no division, so zeros stay exact.
template <typename T, typename Layout>
__device__ void pool_backward(const T* __restrict__ x, const T* __restrict__ grad_out,
                              T* __restrict__ grad, index_t n_out, Layout layout) {
    const int n = layout.members();
    for (index_t o = first_index(); o < n_out; o += stride()) {
        T prefix = grad_out[o];
        for (int k = 0; k < n; ++k) {
            const index_t i = layout.offset(o, k);
            grad[i] = prefix;
            prefix *= x[i];
        }
        T suffix = T(1);
        for (int k = n - 1; k >= 0; --k) {
            const index_t i = layout.offset(o, k);
            grad[i] *= suffix;
            suffix *= x[i];
        }
    }
}

// Log domain: a value is sign * exp(logabs); a window's product is the sum of its logabs
// and the product of its signs, finite at any depth.
template <typename T, typename S, typename Layout>
__device__ void pool_log_forward(const T* __restrict__ logabs, const S* __restrict__ sign,
                                 T* __restrict__ out_logabs, S* __restrict__ out_sign,
                                 index_t n_out, Layout layout) {
    const int n = layout.members();
    for (index_t o = first_index(); o < n_out; o += stride()) {
        const index_t i0 = layout.offset(o, 0);
        T la = logabs[i0];
        S sg = sign[i0];
        for (int k = 1; k < n; ++k) {
            const index_t i = layout.offset(o, k);
            la += logabs[i];
            sg *= sign[i];
        }
        out_logabs[o] = la;
        out_sign[o] = sg;
    }
}

}  // namespace fasttn

using fasttn::index_t;

#define FASTTN_POOL_ENTRIES(T)                                                              \
    extern "C" __global__ void product_pool_chain_##T(const T* x, T* out, index_t n_out,    \
                                                      index_t channels, index_t window) {   \
        fasttn::pool_forward<T>(x, out, n_out, fasttn::Chain{channels, window});            \
    }                                                                                       \
    extern "C" __global__ void product_pool_grid_##T(const T* x, T* out, index_t n_out,     \
                                                     index_t channels, index_t width_out) { \
        fasttn::pool_forward<T>(x, out, n_out, fasttn::Grid{channels, width_out});          \
    }                                                                                       \
    extern "C" __global__ void product_pool_chain_backward_##T(                             \
        const T* x, const T* grad_out, T* grad, index_t n_out, index_t channels,            \
        index_t window) {                                                                   \
        fasttn::pool_backward<T>(x, grad_out, grad, n_out, fasttn::Chain{channels, window});\
    }                                                                                       \
    extern "C" __global__ void product_pool_grid_backward_##T(                              \
        const T* x, const T* grad_out, T* grad, index_t n_out, index_t channels,            \
        index_t width_out) {                                                                \
        fasttn::pool_backward<T>(x, grad_out, grad, n_out,                                  \
                                 fasttn::Grid{channels, width_out});                        \
    }

// Log-domain entries: logabs of type T, sign of type S (named int8, float or double), so a
// sign kept as int8 (the q-CNN's choice: a quarter of the bytes) needs no conversion.
#define FASTTN_POOL_LOG_ENTRIES(T, S, SNAME)                                                \
    extern "C" __global__ void product_pool_log_chain_##T##_##SNAME(                        \
        const T* logabs, const S* sign, T* out_logabs, S* out_sign, index_t n_out,          \
        index_t channels, index_t window) {                                                 \
        fasttn::pool_log_forward<T, S>(logabs, sign, out_logabs, out_sign, n_out,           \
                                       fasttn::Chain{channels, window});                    \
    }                                                                                       \
    extern "C" __global__ void product_pool_log_grid_##T##_##SNAME(                         \
        const T* logabs, const S* sign, T* out_logabs, S* out_sign, index_t n_out,          \
        index_t channels, index_t width_out) {                                              \
        fasttn::pool_log_forward<T, S>(logabs, sign, out_logabs, out_sign, n_out,           \
                                       fasttn::Grid{channels, width_out});                  \
    }

FASTTN_POOL_ENTRIES(float)
FASTTN_POOL_ENTRIES(double)

FASTTN_POOL_LOG_ENTRIES(float, signed char, int8)
FASTTN_POOL_LOG_ENTRIES(float, float, float)
FASTTN_POOL_LOG_ENTRIES(float, double, double)
FASTTN_POOL_LOG_ENTRIES(double, signed char, int8)
FASTTN_POOL_LOG_ENTRIES(double, float, float)
FASTTN_POOL_LOG_ENTRIES(double, double, double)
