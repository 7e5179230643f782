from torch.utils.data import DataLoader, Dataset

from asymcl.cli import main
from asymcl.errors import DataError, user_message


class _BrokenDataset(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise DataError("image /data/x.jpg is corrupt: re-export it or remove it from the CSV")


def test_a_user_error_from_a_dataloader_worker_is_one_line():
    loader = DataLoader(_BrokenDataset(), num_workers=1)
    try:
        next(iter(loader))
    except DataError as exc:
        assert "Original Traceback" in str(exc)  # what torch does to it
        assert user_message(exc) == "image /data/x.jpg is corrupt: re-export it or remove it from the CSV"
    else:  # pragma: no cover
        raise AssertionError("the worker's DataError did not reach the main process")


def test_plain_messages_are_kept():
    assert user_message(DataError("a\nb")) == "a\nb"


def test_cli_prints_one_line_for_user_errors(capsys):
    assert main(["data", "summary", "--dataset", "fashion-mnist", "--root", "/nonexistent/fm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asymcl: error: ") and "Traceback" not in err


def test_digits_with_a_root_is_refused(capsys):
    assert main(["data", "summary", "--dataset", "digits", "--root", "/some/folder"]) == 2
    assert "dataset=digits reads no root" in capsys.readouterr().err
