"""The text a task is prompted with, shared by training and evaluation."""

# The prompts the authors use for forward tasks; other maps get "<name> map".
MAP_PROMPTS = {"seg": "segmentation map", "depth": "depth map", "hed": "hed map"}


def map_prompt(map_name: str) -> str:
    """The prompt of the forward task image -> `map_name` ("depth map")."""
    return MAP_PROMPTS.get(map_name, f"{map_name.replace('_', ' ')} map")
