using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// LoRA layers and a LoRA-injected model on a Gpu device agree with the CPU. Skipped (reported as skipped) without
/// CUDA; scripts/gpu-check.sh runs the same methods on a GPU machine.
/// </summary>
[TestClass]
[CudaCondition]
public sealed class CudaLayerTests
{
    // Float32 on both devices; only the summation order differs (cuBLAS/cuDNN kernels vs CPU). Linear and
    // embedding sums are a few terms long, so 1e-4 of the output scale is ~100× that noise. Convolutions may run in
    // TF32 on Ampere+ (cuDNN's default, PyTorch's torch.backends.cudnn.allow_tf32 = True): a 10-bit mantissa,
    // 2^-11 relative per product, so 5e-3 of the scale.
    /// <summary>cuda:0 (or the CPU in a stand-in dry run, see <see cref="CudaConditionAttribute.CpuStandIn"/>).</summary>
    private static Device Gpu => CudaConditionAttribute.Device;

    private static double Tolerance(string kind) => kind.StartsWith("Conv", StringComparison.Ordinal) ? 5e-3 : 1e-4;

    [TestMethod]
    [DataRow("Linear")]
    [DataRow("Embedding")]
    [DataRow("Conv1d")]
    [DataRow("Conv2dGroups")]
    [DataRow("Conv3dGroups")]
    [DataRow("MergedLinear")]
    public void Layer_ForwardBackwardOnCuda_MatchesCpu(string kind)
    {
        using var scope = NewDisposeScope();
        manual_seed(11);
        var c = LayerCase.Create(kind);
        c.RandomizeFactors();
        var x = c.Input();

        var (yCpu, gradsCpu) = ForwardBackward(c.Layer, x);
        c.Layer.to(Gpu);
        Assert.AreEqual(Gpu.type, c.Layer.lora_A!.device_type, "lora_A moved with the module");
        Assert.AreEqual(Gpu.type, c.Layer.lora_B!.device_type, "lora_B moved with the module");
        var (yCuda, gradsCuda) = ForwardBackward(c.Layer, x.to(Gpu));

        double tol = Tolerance(kind);
        Assert.IsLessThan(tol, TestUtil.MaxRelativeDifference(yCuda, yCpu), $"{kind}: output");
        CollectionAssert.AreEquivalent(gradsCpu.Keys.ToList(), gradsCuda.Keys.ToList(), $"{kind}: same parameters get gradients");
        Assert.IsTrue(gradsCpu.ContainsKey("lora_A") && gradsCpu.ContainsKey("lora_B"), $"{kind}: factors get gradients");
        foreach (var (name, g) in gradsCpu)
        {
            Assert.IsGreaterThan(0.0, (double)g.abs().max().item<float>(), $"{kind}: gradient of {name} is not all zero");
            Assert.IsLessThan(tol, TestUtil.MaxRelativeDifference(gradsCuda[name], g), $"{kind}: gradient of {name}");
        }
    }

    [TestMethod]
    [DataRow("Linear", ScalarType.BFloat16)]
    [DataRow("Linear", ScalarType.Float16)]
    [DataRow("Embedding", ScalarType.BFloat16)]
    [DataRow("Conv2dGroups", ScalarType.BFloat16)]
    [DataRow("Conv2dGroups", ScalarType.Float16)]
    [DataRow("MergedLinear", ScalarType.BFloat16)]
    public void Layer_MergeUnmergeOnCudaHalfBase_MatchesFloat32MergeRoundedOnce(string kind, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        manual_seed(12);
        var half = LayerCase.Create(kind, dtype: dtype);
        half.RandomizeFactors();
        manual_seed(12);
        var single = LayerCase.Create(kind);
        using (no_grad())
        {
            single.Layer.weight.copy_(half.Layer.weight);
            single.Layer.lora_A!.copy_(half.Layer.lora_A!);
            single.Layer.lora_B!.copy_(half.Layer.lora_B!);
        }

        half.Layer.to(Gpu);
        Assert.AreEqual(dtype, half.Layer.weight.dtype, "base stays half on Gpu");
        Assert.AreEqual(ScalarType.Float32, half.Layer.lora_A!.dtype, "factors stay float32 on Gpu");
        Assert.AreEqual(Gpu.type, half.Layer.lora_B!.device_type);
        var original = half.Layer.weight.detach().clone();

        half.Layer.merge();
        single.Layer.merge();
        Assert.IsTrue(half.Layer.merged);
        Assert.AreEqual(dtype, half.Layer.weight.dtype, "merge keeps the base dtype");
        Assert.AreEqual(Gpu.type, half.Layer.weight.device_type, "merge keeps the base on Gpu");

        // ΔW is formed in float32 on the GPU and W + ΔW rounded once to the half type, so the result is the CPU float32
        // merge rounded to half, up to one unit in the last place where the GPU's float32 sum lands on the other side of
        // a rounding boundary: 2^-7 (bfloat16) or 2^-10 (float16) of the weight scale.
        double ulp = dtype == ScalarType.BFloat16 ? 1.0 / 128 : 1.0 / 1024;
        Assert.IsLessThanOrEqualTo(ulp, TestUtil.MaxRelativeDifference(half.Layer.weight, single.Layer.weight.to(dtype)), $"{kind} {dtype}: merged weight");
        Assert.IsGreaterThan(ulp, TestUtil.MaxRelativeDifference(half.Layer.weight, original), $"{kind} {dtype}: merging changed the weight by more than rounding");

        // round(round(W + ΔW) − ΔW): two roundings of half an ulp each, the first at the scale of the merged weight,
        // the second at the scale of W; one ulp of the merged weight's scale bounds both.
        double mergedScale = single.Layer.weight.abs().max().item<float>();
        half.Layer.unmerge();
        Assert.IsFalse(half.Layer.merged);
        Assert.IsLessThanOrEqualTo(ulp * mergedScale, TestUtil.MaxAbsoluteDifference(half.Layer.weight, original), $"{kind} {dtype}: unmerged weight");
    }

    [TestMethod]
    public void Linear_Bfloat16BaseOnCuda_CloseToFloat32AndGradientsStayFloat32()
    {
        using var scope = NewDisposeScope();
        manual_seed(13);
        var reference = lora.Linear(64, 48, r: 8, lora_alpha: 16, device: Gpu);
        var mixed = lora.Linear(64, 48, r: 8, lora_alpha: 16, dtype: ScalarType.BFloat16, device: Gpu);
        using (no_grad())
        {
            nn.init.normal_(reference.lora_B!, 0, 0.2);
            mixed.weight.copy_(reference.weight);
            mixed.bias!.copy_(reference.bias!);
            mixed.lora_A!.copy_(reference.lora_A!);
            mixed.lora_B!.copy_(reference.lora_B!);
        }

        Assert.AreEqual(ScalarType.Float32, mixed.lora_A!.dtype, "LoRA factors stay float32 over a bfloat16 base");
        var x = randn(16, 64, device: Gpu);
        var yRef = reference.call(x);
        var yMixed = mixed.call(x.to(ScalarType.BFloat16));
        Assert.AreEqual(ScalarType.BFloat16, yMixed.dtype, "output has the base's dtype");
        // bfloat16 keeps 8 significant bits: inputs, weights and the output are each rounded once (2^-9 relative each),
        // and the 64-term sum is accumulated in float32 by cuBLAS; 2e-2 of the scale bounds that with room.
        Assert.IsLessThan(2e-2, TestUtil.MaxRelativeDifference(yMixed, yRef), "bfloat16 base output close to float32");

        yRef.square().sum().backward();
        yMixed.to(ScalarType.Float32).square().sum().backward();
        Assert.AreEqual(ScalarType.Float32, mixed.lora_A!.grad!.dtype, "gradients of the factors are float32 (optimizer state follows)");
        Assert.IsLessThan(5e-2, TestUtil.MaxRelativeDifference(mixed.lora_B!.grad!, reference.lora_B!.grad!), "lora_B gradient");
        Assert.IsLessThan(5e-2, TestUtil.MaxRelativeDifference(mixed.lora_A!.grad!, reference.lora_A!.grad!), "lora_A gradient");
    }

    [TestMethod]
    public void LoraTrainingStep_OnCuda_ChangesOnlyLoraParameters()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(14);
        lora.inject_adapter_in_model(new LoraConfig { r = 2, lora_alpha = 4, target_modules = ["query", "value"] }, model);
        lora.mark_only_lora_as_trainable(model);
        foreach (var (_, p) in model.named_parameters().Where(p => p.name.EndsWith("lora_B", StringComparison.Ordinal)))
        {
            TestUtil.Randomize(p, 0.3); // B ≠ 0, so that A gets a gradient too
        }

        model.to(Gpu);
        foreach (var (name, p) in model.named_parameters())
        {
            Assert.AreEqual(Gpu.type, p.device_type, $"{name} on Gpu");
        }

        var before = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().cpu().clone());
        var optimizer = optim.AdamW(model.parameters().Where(p => p.requires_grad), lr: 1e-2);
        var ids = MiniBert.Ids().to(Gpu);
        var labels = tensor(new long[] { 0, 1, 1 }, device: Gpu);
        optimizer.zero_grad();
        nn.functional.cross_entropy(model.call(ids), labels).backward();
        optimizer.step();

        int changed = 0;
        foreach (var (name, p) in model.named_parameters())
        {
            Assert.AreEqual(Gpu.type, p.device_type, $"{name} stays on Gpu after the step");
            var now = p.detach().cpu();
            if (TestUtil.IsLoraKey(name))
            {
                Assert.IsFalse(now.Equals(before[name]), $"{name} is trained");
                changed++;
            }
            else
            {
                Assert.IsNull(p.grad, $"{name} is frozen: no gradient");
                TestUtil.AssertExactlyEqual(now, before[name], $"{name} (frozen)");
            }
        }

        Assert.AreEqual(8, changed, "2 layers × (query, value) × (A, B)");
    }

    [TestMethod]
    public void Model_CpuToCudaToCpu_KeepsLoraStateAndOutput()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(15);
        lora.inject_adapter_in_model(new LoraConfig { r = 2, lora_alpha = 4, target_modules = ["query", "value", "word_embeddings"] }, model);
        foreach (var (name, p) in model.named_parameters().Where(p => TestUtil.IsLoraKey(p.name)))
        {
            TestUtil.Randomize(p, 0.3);
        }

        model.eval();
        var ids = MiniBert.Ids();
        var stateCpu = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        var yCpu = model.call(ids);

        model.to(Gpu);
        var yCuda = model.call(ids.to(Gpu));
        Assert.AreEqual(Gpu.type, yCuda.device_type);
        Assert.IsLessThan(1e-4, TestUtil.MaxRelativeDifference(yCuda.cpu(), yCpu), "same output on Gpu (float32, summation order only)");

        model.train();  // unmerges on the GPU
        model.eval();   // merges again on the GPU
        model.to(CPU);
        var stateBack = model.state_dict();
        CollectionAssert.AreEquivalent(stateCpu.Keys.ToList(), stateBack.Keys.ToList(), "same state-dict keys after the round trip");
        foreach (var (key, value) in stateCpu)
        {
            Assert.AreEqual(DeviceType.CPU, stateBack[key].device_type, key);
            if (TestUtil.IsLoraKey(key))
            {
                TestUtil.AssertExactlyEqual(stateBack[key], value, key);
            }
            else
            {
                // Merged base weights went through one extra unmerge/merge in float32 on the GPU.
                Assert.IsLessThan(1e-5, TestUtil.MaxRelativeDifference(stateBack[key], value), key);
            }
        }

        Assert.IsLessThan(1e-5, TestUtil.MaxRelativeDifference(model.call(ids), yCpu), "output back on the CPU");
    }

    [TestMethod]
    public void PeftAdapter_SavedFromCudaModel_LoadsOntoCpuAndCudaModels()
    {
        using var scope = NewDisposeScope();
        var trained = MiniBert.Create(16);
        lora.inject_adapter_in_model(new LoraConfig { r = 2, lora_alpha = 4, target_modules = ["query", "value"] }, trained);
        foreach (var (_, p) in trained.named_parameters().Where(p => TestUtil.IsLoraKey(p.name)))
        {
            TestUtil.Randomize(p, 0.3);
        }

        trained.to(Gpu);
        trained.eval();
        var ids = MiniBert.Ids();
        var expected = trained.call(ids.to(Gpu)).cpu();
        string dir = Path.Combine(Path.GetTempPath(), "lora-cuda-peft-" + Guid.NewGuid().ToString("N"));
        try
        {
            PeftAdapter.Save(trained, dir);   // factors copied off the GPU into the safetensors file

            var onCpu = MiniBert.Create(16);
            PeftAdapter.Load(onCpu, dir, log: _ => { });
            onCpu.eval();
            // Saved bytes are the float32 factors; only the GPU's summation order differs from the CPU forward.
            Assert.IsLessThan(1e-5, TestUtil.MaxRelativeDifference(onCpu.call(ids), expected), "adapter trained on CUDA, used on the CPU");

            var onGpu = MiniBert.Create(16);
            onGpu.to(Gpu);
            PeftAdapter.Load(onGpu, dir, log: _ => { });
            foreach (var (name, p) in onGpu.named_parameters().Where(p => TestUtil.IsLoraKey(p.name)))
            {
                Assert.AreEqual(Gpu.type, p.device_type, $"{name}: loaded onto the model's device");
            }

            onGpu.eval();
            Assert.IsLessThan(1e-6, TestUtil.MaxRelativeDifference(onGpu.call(ids.to(Gpu)).cpu(), expected), "same device, same factors");
        }
        finally
        {
            if (Directory.Exists(dir))
            {
                Directory.Delete(dir, recursive: true);
            }
        }
    }

    private static (Tensor output, Dictionary<string, Tensor> grads) ForwardBackward(nn.Module<Tensor, Tensor> layer, Tensor x)
    {
        layer.train();
        layer.zero_grad();
        var y = layer.call(x);
        manual_seed(99);
        var probe = randn(y.shape).to(y.device);
        (y * probe).sum().backward();
        var grads = layer.named_parameters()
            .Where(p => p.parameter.grad is not null)
            .ToDictionary(p => p.name, p => p.parameter.grad!.detach().cpu().clone());
        return (y.detach().cpu(), grads);
    }

    [TestMethod]
    public void Checkpoint_WithDropoutOnCuda_GradientsEqualPlainBackwardWithTheSameMasks()
    {
        // On CUDA, lora.checkpoint seeds the device generator per segment from the CPU stream (TorchSharp cannot read a
        // CUDA generator's state) and seeds it again for the recomputation. The plain run below seeds the same way, so
        // both draw the same dropout masks; equal gradients then show that the recomputation replayed them.
        using var scope = NewDisposeScope();
        bool onCuda = Gpu.type == DeviceType.CUDA;
        Dictionary<string, Tensor> Run(bool checkpointed)
        {
            manual_seed(3);
            var segments = Enumerable.Range(0, 2).Select(_ => nn.Sequential(
                ("up", (nn.Module<Tensor, Tensor>)lora.Linear(8, 16, r: 2, lora_alpha: 4, lora_dropout: 0.2)),
                ("act", nn.GELU()), ("drop", nn.Dropout(0.3)), ("down", nn.Linear(16, 8)))).ToArray();
            foreach (var segment in segments)
            {
                lora.mark_only_lora_as_trainable(segment);
                TestUtil.Randomize(segment.named_parameters().Single(p => p.name == "up.lora_B").parameter);
                segment.to(Gpu);
            }

            manual_seed(5);
            var h = randn(4, 5, 8).to(Gpu);
            foreach (var segment in segments)
            {
                if (checkpointed)
                {
                    h = lora.checkpoint(segment.call, h, segment.parameters());
                }
                else
                {
                    if (onCuda)
                    {
                        using var seed = randint(long.MaxValue, [1], dtype: ScalarType.Int64);
                        cuda.manual_seed(seed.item<long>());
                    }

                    h = segment.call(h);
                }
            }

            h.pow(2).sum().backward();
            return segments.SelectMany((s, i) => s.named_parameters().Where(p => p.parameter.requires_grad)
                .Select(p => (name: $"{i}.{p.name}", grad: p.parameter.grad!.cpu()))).ToDictionary(p => p.name, p => p.grad);
        }

        var plain = Run(false);
        var checkpointed = Run(true);
        Assert.HasCount(4, plain, "lora_A and lora_B of both segments");
        foreach (var (name, grad) in plain)
        {
            Assert.IsLessThan(1e-5, TestUtil.MaxRelativeDifference(checkpointed[name], grad), $"gradient of {name}");
        }
    }
}
