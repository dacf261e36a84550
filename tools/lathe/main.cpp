// lathe: one binary, many subcommands. Library errors arrive here as lathe::Error and leave as a
// single "lathe: error: ..." line and a non-zero exit code; nothing below main calls exit().
#include <cstdio>
#include <exception>

#include "commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/parallel.h"

int main(int argc, char** argv) {
  CLI::App app{"lathe: quantize, run, serve, evaluate and fine-tune LLMs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "lathe 0.1.0");
  int threads = 0;
  bool verbose = false;
  app.add_option("-t,--threads", threads, "CPU threads (default: all cores)");
  app.add_flag("-v,--verbose", verbose, "log progress and timings to stderr");
  app.parse_complete_callback([&] {
    if (threads > 0) lathe::set_num_threads(threads);
    if (verbose) lathe::set_log_level(lathe::LogLevel::kInfo);
  });
  app.fallthrough();

  lathe::cli::add_info_command(app);
  lathe::cli::add_score_command(app);
  lathe::cli::add_generate_command(app);
  lathe::cli::add_perplexity_command(app);
  lathe::cli::add_chat_command(app);
  lathe::cli::add_tokenize_command(app);
  lathe::cli::add_template_command(app);
  lathe::cli::add_bench_command(app);
  lathe::cli::add_quantize_command(app);
  lathe::cli::add_eval_command(app);
  lathe::cli::add_compare_command(app);
  lathe::cli::add_serve_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const lathe::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "lathe: error: %s\n", e.what());
    return e.kind() == lathe::ErrorKind::kInvalidArgument ? 2 : 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "lathe: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
