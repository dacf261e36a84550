// Subcommand registration for the lathe CLI. Each add_*_command attaches a CLI11 subcommand whose
// callback does the work; errors propagate as lathe::Error and become one line + exit code in main.
#pragma once

#include <CLI/CLI.hpp>

namespace lathe::cli {

void add_info_command(CLI::App& app);
void add_score_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_perplexity_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_template_command(CLI::App& app);
void add_chat_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_compare_command(CLI::App& app);
void add_serve_command(CLI::App& app);

}  // namespace lathe::cli
