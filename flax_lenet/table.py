"""One plain-text table formatter, for the comparison reports, the graph and the app's output."""


def format_table(header, rows, *, right=()) -> str:
    """Columns padded to their widest cell, a dashed rule under the header.

    Args:
      header: the column titles. rows: sequences of cells (anything ``str`` accepts).
      right: indices of the columns to right-align (numbers); the others are left-aligned.

    Returns:
      The table, one line per row, without trailing spaces.
    """
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])
