"""eval.md's headline table, one row per labelled summary."""
from lkd_jax.evaluate import results


def test_headline_table_has_a_row_per_summary_and_the_union_of_their_columns():
  table = results.headline_table(
      {'teacher': {'synthetic': {'top1': 0.9}, 'synthetic_c': {'mean_error': 0.25}},
       'student': {'synthetic': {'top1': 0.5}, 'imagenet_a': {'missing': ['imagenet_a']}}},
      first='run')
  assert table.splitlines() == [
      '| run | synthetic top-1 | synthetic-C mean err | IN-A |', '|---|---|---|---|',
      '| teacher | 90.00 | 25.00 | - |', '| student | 50.00 | - | missing |']
