// Unit 1 of the bf16 token-KD kernels (see units.h): the divergences whose id % kUnits == 1.
#include "unit.cuh"

FDIV_TOKEN_KD_UNIT(__nv_bfloat16, 1)
