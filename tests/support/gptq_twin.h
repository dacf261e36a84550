// A GPTQ checkpoint made from a float model by the test itself, with the documented packing (4-bit,
// group 32, asymmetric, act-order g_idx), and its float16 "twin" holding exactly the dequantized
// weights: loading either must give the same model. Used by the GPTQ load test and the GPTQ-to-EXL2
// conversion test.
#pragma once

#include <cstdint>
#include <filesystem>

namespace lathe::testing {

// Writes gptq_dir (and plain_dir, unless empty) from the float model in src; returns how many
// linear layers were quantized (those whose shapes allow group 32 and 8-row packing).
int write_gptq_twin(const std::filesystem::path& src, const std::filesystem::path& gptq_dir,
                    const std::filesystem::path& plain_dir, uint32_t seed);

}  // namespace lathe::testing
