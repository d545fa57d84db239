"""What fits where: the layout planner behind ``megagpt/plan.py`` (``model``: what a layout
costs; ``search``: candidates, ranking, explanation; ``report``: tables)."""
