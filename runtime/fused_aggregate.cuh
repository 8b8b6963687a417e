// Fused aggregation, one output pixel at a time (protocol.md section 3, "fused").
//
// A(x, y) = prod_i bilinear(p_i)(x, y) with aligned corners (torch align_corners=True),
// mask = A >= tau, where p_i are the levels already resized to the finest size and
// smoothed there on the host (edgeas.aggregate.fused_levels). The same arithmetic is compiled for the GPU (fused_aggregate.cu,
// through pycuda) and for the host (the tests build it with g++ and compare it with the
// numpy/OpenCV path), so the kernel's numbers are checked on a machine without a GPU.
//
// Levels are stored back to back in one float buffer: level i starts at offsets[i] and
// is hs[i] x ws[i], row-major. One flat buffer means one upload and a kernel signature
// that does not depend on the number of levels.
#ifndef EDGEAS_FUSED_AGGREGATE_CUH
#define EDGEAS_FUSED_AGGREGATE_CUH

#ifdef __CUDACC__
#define EDGEAS_HD __host__ __device__ __forceinline__
#else
#include <math.h>
#define EDGEAS_HD static inline
#endif

// Source coordinate and weight of output index `dst` along one axis, torch's
// align_corners=True: src = dst * ((n_in - 1) / (n_out - 1)), the scale rounded to float
// first and then one float product, as torch and the numpy path compute it (built with
// --fmad=false nothing fuses it into other arithmetic). src never leaves [0, n_in - 1]
// except by rounding at the last sample, which the clamp absorbs.
EDGEAS_HD void edgeas_axis(int dst, int n_in, int n_out, int* i0, int* i1, float* frac) {
    float scale = n_out > 1 ? (float)(n_in - 1) / (float)(n_out - 1) : 0.0f;
    float src = scale * (float)dst;
    int lo = (int)floorf(src);
    float f = src - (float)lo;
    if (lo >= n_in - 1) {
        lo = n_in - 1;
        f = 0.0f;
    }
    *i0 = lo;
    *i1 = lo + 1 < n_in ? lo + 1 : n_in - 1;
    *frac = f;
}

// Bilinear sample of one level (h x w) at output pixel (x, y) of an out_h x out_w map.
// Width first, then height, as OpenCV combines them.
EDGEAS_HD float edgeas_bilinear(const float* level, int h, int w, int out_h, int out_w, int x,
                                int y) {
    int x0, x1, y0, y1;
    float fx, fy;
    edgeas_axis(x, w, out_w, &x0, &x1, &fx);
    edgeas_axis(y, h, out_h, &y0, &y1, &fy);
    const float* r0 = level + y0 * w;
    const float* r1 = level + y1 * w;
    float top = r0[x0] * (1.0f - fx) + r0[x1] * fx;
    float bottom = r1[x0] * (1.0f - fx) + r1[x1] * fx;
    return top * (1.0f - fy) + bottom * fy;
}

// The anomaly value at (x, y). Product order res1, resK, ..., res2: the official code's
// order, which the numpy path follows too (float products are not associative).
EDGEAS_HD float edgeas_fused_pixel(const float* data, const int* offsets, const int* hs,
                                   const int* ws, int n_levels, int out_h, int out_w, int x,
                                   int y) {
    float acc = edgeas_bilinear(data + offsets[0], hs[0], ws[0], out_h, out_w, x, y);
    for (int i = n_levels - 1; i >= 1; --i) {
        acc *= edgeas_bilinear(data + offsets[i], hs[i], ws[i], out_h, out_w, x, y);
    }
    return acc;
}

EDGEAS_HD unsigned char edgeas_mask(float value, float tau) {
    return value >= tau ? (unsigned char)1 : (unsigned char)0;
}

#endif  // EDGEAS_FUSED_AGGREGATE_CUH
