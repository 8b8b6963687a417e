// The GPU kernel of the fused aggregation: one thread per output pixel samples every
// level, multiplies, thresholds and writes map and mask in the same pass (no full-size
// intermediate per level). Compiled at run time by pycuda (edgeas.runtime.cuda_aggregate)
// and with `nvcc -ptx` in the tests.
#include "fused_aggregate.cuh"

extern "C" __global__ void edgeas_fused_aggregate(const float* __restrict__ data,
                                                  const int* __restrict__ offsets,
                                                  const int* __restrict__ hs,
                                                  const int* __restrict__ ws, int n_levels,
                                                  int out_h, int out_w, float tau,
                                                  int with_mask, float* __restrict__ out_map,
                                                  unsigned char* __restrict__ out_mask) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= out_w || y >= out_h) {
        return;
    }
    float value = edgeas_fused_pixel(data, offsets, hs, ws, n_levels, out_h, out_w, x, y);
    int index = y * out_w + x;
    out_map[index] = value;
    if (with_mask) {
        out_mask[index] = edgeas_mask(value, tau);
    }
}
