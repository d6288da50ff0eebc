r"""python -m experiments.train --config=mnist5k_population --max_minutes=60

`mnist5k` as a population of 4 agents trained as one program (`spiral_jax.population`)
that share one critic (SPIRAL++). Each member's learning rate and entropy cost are drawn
log-uniformly from SPIRAL++'s ranges (1e-5..3e-4, 2e-3..1e-1); every 100 steps PBT
copies the member with the lowest Fréchet distance to training digits over the one
with the highest and perturbs the copy's by x1.2 or /1.2. Samples, the best checkpoint
and evaluation use the fittest member. Against a single run: docs/results.md.
"""

from experiments.configs import mnist5k


def get_config():
    c = mnist5k.get_config()
    c.population.size = 4
    c.population.shared_disc = True
    c.population.exploit_every = 100  # with eval_every 100: the Fréchet distance is fresh
    return c
