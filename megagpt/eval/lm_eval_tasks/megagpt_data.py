"""Loaders the task YAMLs here name with ``custom_dataset: !function megagpt_data.<name>``: megagpt
task files and text corpora as datasets, read from ``task_file`` / ``corpus_file`` (relative to the
working directory)."""
from megagpt.eval.tasks import load_task


def task(task_file, **_):
    return load_task(task_file).to_datasets()


def corpus(corpus_file, **_):
    import datasets

    from megagpt.eval.contamination import training_texts

    rows = [{"text": t} for t in training_texts([corpus_file])]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
