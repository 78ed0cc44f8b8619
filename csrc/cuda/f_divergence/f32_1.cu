// Unit 1 of the f32 token-KD kernels (see units.h): the divergences whose id % kUnits == 1.
#include "unit.cuh"

FDIV_TOKEN_KD_UNIT(float, 1)
