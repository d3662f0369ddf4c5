"""jaxoip from Python: a layer's OIP search as a table, then the lower-level pieces, printed."""

import os
import sys

import jaxoip

if getattr(jaxoip, "__file__", None) is None:
    # A folder named jaxoip/ (such as the checkout itself) beside this script was imported instead of the package.
    sys.exit(
        f"error: the folder {list(jaxoip.__path__)[0]} hides the installed jaxoip package; run this script from "
        "another folder, or install with: pip install -e . --config-settings editable_mode=compat"
    )

# JAXOIP_EXAMPLE_QUICK=1: a few maps, starts and steps (the tests run it so).
QUICK = bool(os.environ.get("JAXOIP_EXAMPLE_QUICK"))
STEPS, MAPS, RESTARTS = (20, 4, 2) if QUICK else (300, 16, 4)

model = jaxoip.load_reference_model()  # TrainedModel: .model (NNX), .standardization, .history
data = jaxoip.load_mnist()  # $JAXOIP_DATA_DIR, or load_mnist("../shared/data/mnist")
cfg = jaxoip.OIPConfig(steps=STEPS)  # every field validated; precision="highest" by default
scan = jaxoip.scan_maps(model, "Conv2D_3", map_indices=range(MAPS), restarts=RESTARTS, config=cfg, data=data)
table = scan.table()  # pandas DataFrame, one row per map
print(table[["map", "best_objective", "method", "facets", "silent_on_noise", "dead_on_data"]].to_string(index=False))
only_structured = table[table.silent_on_noise & ~table.dead_on_data]
print("maps that only structured inputs wake:", only_structured["map"].tolist())
print("images", scan.images.shape, "traces", scan.traces.shape)  # NumPy arrays: (maps, starts, 28, 28, 1), ...

# Lower level: any batch of (map, start) pairs in one compiled program.
keys = jaxoip.start_keys(0, [120, 121, 122, 123], 2).reshape(-1)  # 2 distinct starts for each of 4 maps
x0 = jaxoip.initial_images(keys, ["coarse7"])
res = jaxoip.search_oips(model.model, "Conv2D_3", [120, 120, 121, 121, 122, 122, 123, 123], x0, cfg)
print("objective of each (map, start):", " ".join(f"{v:.3f}" for v in res.objective))
pre = jaxoip.precursor_scan(model.model, "Conv2D_3", starts=8 if QUICK else 64)  # maps x recipes
print(pre.table()[["map", "best_recipe", "silent_on_noise"]].head().to_string())
acts = jaxoip.layer_output(*model.split(), model.standardization(data.test_images[:8]), "Conv2D_2")
print("Conv2D_2 activations of 8 test images:", acts.shape)

# Objectives are values, as in Lucent: a layer resolved once, targets composed with + - *, -obj minimizes.
logits = model.model.layer("Dense_2")  # a Layer: name, kind, shape (10,), activation "softmax"
four_not_nine = jaxoip.channel(logits, 4) - jaxoip.channel(logits, 9)  # the class logits' difference
res = jaxoip.search_oips(model.model, four_not_nine, [0, 0], x0[:2], cfg)
print("4 rather than 9, per start:", " ".join(f"{v:.2f}" for v in res.objective))
plan = jaxoip.plan_scan(model, -jaxoip.objective(logits), maps=[4], restarts=RESTARTS, config=cfg)  # checked once
least_four = jaxoip.scan_layer(plan, progress=False)  # the precursor scan, screened starts, then the search
print("the input that says 4 least: its negated logit", f"{least_four.objective.max():.2f}")
