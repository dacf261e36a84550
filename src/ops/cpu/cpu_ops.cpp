// Placeholder: forwards to the reference ops until the SIMD backend lands (see the ops/cpu helper).
#include "ops/ops.h"

namespace lathe::ops {
std::unique_ptr<Ops> make_cpu_ops() { return make_ref_ops(); }
}  // namespace lathe::ops
