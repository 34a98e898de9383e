"""The CPU's vector ISA from /proc/cpuinfo text, and the per-program XLA:CPU options chosen by it."""

from __future__ import annotations

import pytest

from ddpm_harness import cpu_isa
from jax_ddpm import speed

# Abridged /proc/cpuinfo of the machines seen: an AVX-512 EPYC, an AVX2-only EPYC, an Arm server, an old x86.
AVX512 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl
"""
AVX2 = """processor\t: 0
model name\t: AMD EPYC 7R13 Processor
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
"""
ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp sve
CPU implementer\t: 0x41
"""
OLD_X86 = "model name\t: Intel(R) Xeon(R) CPU E5-2670\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx\n"


@pytest.mark.parametrize(
    "text, isa",
    [
        (AVX512, "avx512"),
        (AVX2, "avx2"),
        (ARM, "other"),
        (OLD_X86, "other"),
        ("", "other"),
        ("garbage without colons\n", "other"),
    ],
)
def test_vector_isa_from_cpuinfo_text(text, isa):
    assert cpu_isa.vector_isa(text) == isa


def test_the_options_follow_the_isa():
    training, sampling = speed.options_for(cpu_isa.vector_isa(AVX512))
    assert training == {"xla_cpu_prefer_vector_width": 512}
    assert sampling == {"xla_cpu_experimental_ynn_fusion_type": "1,2"}
    training, sampling = speed.options_for(cpu_isa.vector_isa(AVX2))
    assert training == {} and sampling == {"xla_cpu_experimental_ynn_fusion_type": "2"}
    for text in (ARM, OLD_X86, ""):  # nothing was measured there: no options
        assert speed.options_for(cpu_isa.vector_isa(text)) == ({}, {})
    speed.options_for("avx512")[0]["changed"] = 1  # callers get copies
    assert "changed" not in speed.OPTIONS_BY_ISA["avx512"]["training"]


def test_this_machine_gets_its_isas_options():
    assert speed.ISA == cpu_isa.vector_isa() in cpu_isa.ISAS
    assert (speed.TRAINING, speed.SAMPLING) == speed.options_for(speed.ISA)


def test_cpu_model_name():
    assert cpu_isa.cpu_model(AVX512) == "AMD EPYC 9R14"
    assert cpu_isa.cpu_model(ARM)  # no model name line: the platform's name, never empty
    assert cpu_isa.cpu_model()
