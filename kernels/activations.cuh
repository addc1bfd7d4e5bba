// Activation functions σ and their derivatives σ' for the gpubraid kernels.
//
// The single device-side definition of the formulas in gpubraid/activations.py; the integer codes
// are those of gpubraid.activations.CODES:
//   0 tanh        σ = tanh z                      σ' = 1 − tanh² z
//   1 relu        σ = max(z, 0)                   σ' = [z > 0]
//   2 smoothrelu  σ = 0 (z ≤ −ε), z (z ≥ ε), (z + ε)² / (4ε) between, ε = 0.1
//                 σ' = 0, 1, (z + ε) / (2ε) respectively
//   3 identity    σ = z                           σ' = 1
// The code is a runtime argument: a uniform switch costs nothing next to a 3×3 convolution and
// keeps the number of template instances (and the compile time) small.
#pragma once

#define GB_ACT_TANH 0
#define GB_ACT_RELU 1
#define GB_ACT_SMOOTHRELU 2
#define GB_ACT_IDENTITY 3

__device__ __forceinline__ float gb_tanh(float z) { return tanhf(z); }
__device__ __forceinline__ double gb_tanh(double z) { return tanh(z); }

/// σ(z) for activation code `act` (unknown codes act as the identity).
template <typename T>
__device__ __forceinline__ T gb_sigma(int act, T z) {
    const T eps = T(0.1);
    switch (act) {
        case GB_ACT_TANH:
            return gb_tanh(z);
        case GB_ACT_RELU:
            return z > T(0) ? z : T(0);
        case GB_ACT_SMOOTHRELU:
            if (z <= -eps) return T(0);
            if (z >= eps) return z;
            return (z + eps) * (z + eps) / T(0.4);
        default:
            return z;
    }
}

/// σ'(z) for activation code `act` (unknown codes act as the identity).
template <typename T>
__device__ __forceinline__ T gb_dsigma(int act, T z) {
    const T eps = T(0.1);
    switch (act) {
        case GB_ACT_TANH: {
            const T t = gb_tanh(z);
            return T(1) - t * t;
        }
        case GB_ACT_RELU:
            return z > T(0) ? T(1) : T(0);
        case GB_ACT_SMOOTHRELU:
            if (z <= -eps) return T(0);
            if (z >= eps) return T(1);
            return (z + eps) / T(0.2);
        default:
            return T(1);
    }
}
