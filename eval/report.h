/* The HTML run report (DESIGN.md section 6, run directory): one self-contained file with inline
 * SVG charts, no scripts, no network, no external CSS or fonts, so it opens anywhere and can
 * be attached to an issue as it is.
 *
 * Reads RUN_DIR/metrics.jsonl (required: one JSON object per line,
 *   {"stage": 1, "step": 10, "tokens": 20480, "loss": 0.53, "lr": 1e-3, "grad_norm": 0.8,
 *    "tokens_per_s": 12000.0, "layer_losses": [...]}
 * or an evaluation {"event": "eval", "stage": .., "step": .., "eval": {"ppl": .., ...}}; lines
 * with another "event" are skipped), RUN_DIR/eval.json and RUN_DIR/recipe.json (both
 * optional), and writes RUN_DIR/report.html atomically: a loss curve per stage (log-scale y
 * when the losses span more than two decades), bar charts of the last per-layer losses of
 * stages 1 and 2, the evaluation tables and the recipe summary. */
#ifndef SD_REPORT_H
#define SD_REPORT_H

/* Writes the report to out_path, or RUN_DIR/report.html when out_path is NULL.
 * SD_ERR_INPUT for a missing or empty metrics file ("FILE: ...") or a malformed line
 * ("FILE:LINE: ..."), or an eval.json / recipe.json that is not JSON; SD_ERR_SYS when the
 * report cannot be written. */
int sd_report_write(const char *run_dir, const char *out_path);

#endif
