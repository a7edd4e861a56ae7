using Microsoft.ML.Lora;
using Microsoft.ML.Lora.Models.Vision;
using Microsoft.ML.Lora.Tests;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

/// <summary>
/// The imported ML.NET ResNet-18 with a conv LoRA adapter and a head, exported as PEFT, scored by an independent PyTorch
/// reference (test/pytorch/resnet_peft_reference.py: torchvision's ResNet layout and PEFT's conv LoRA, float64) from the
/// base state dict (torchvision keys) and the adapter folder alone.
/// </summary>
[TestClass]
public sealed class ResNetPyTorchParityTests
{
    private const string Script = "test/pytorch/resnet_peft_reference.py";

    [TestMethod]
    [PyTorchCondition]
    public void PeftAdapter_OnImportedResNet18_PyTorchReferenceGivesSameLogits()
    {
        using var scope = NewDisposeScope();
        string dir = TestData.NewTempDirectory();
        torch.manual_seed(70);
        using var model = ResNet.FromOnnx(DnnImageModels.ResNet18Path(), numClasses: 4);
        string basePath = Path.Combine(dir, "base.safetensors");
        SafeTensors.Write(basePath, model.state_dict(), null, ScalarType.Float32);

        lora.inject_adapter_in_model(new LoraConfig
        {
            r = 4,
            lora_alpha = 8,
            target_modules_regex = @".*(conv[12]|downsample\.0)",   // every convolution, the 1×1 shortcuts too
            rank_pattern = new Dictionary<string, int> { ["layer4.2.conv2"] = 8 },
            modules_to_save = ["fc"],
        }, model);
        torch.manual_seed(71);
        using (no_grad())
        {
            foreach (var (name, p) in model.named_parameters())
            {
                if (name.Contains("lora_B", StringComparison.Ordinal) || name.StartsWith("fc.", StringComparison.Ordinal))
                {
                    p.copy_(randn_like(p).mul_(0.05));
                }
            }
        }

        string adapterDir = PeftAdapter.Save(model, Path.Combine(dir, "adapter"));
        using var normalization = ImageNormalization.FromOnnx(DnnImageModels.ResNetPreprocessPath());
        var images = normalization.Apply(cat([TestImages.Fashion(1, 64), TestImages.Colour(1, 64)], 0));
        string inputs = Path.Combine(dir, "inputs.safetensors");
        SafeTensors.Write(inputs, new Dictionary<string, Tensor> { ["images"] = images }, null, ScalarType.Float32);

        model.eval();   // merged
        Tensor expected;
        using (no_grad())
        {
            expected = model.forward(images);
        }

        string output = Path.Combine(dir, "reference.safetensors");
        var (exit, stdout, stderr) = PyTorchReference.Run(PyTorchReference.FindInRepository(Script), ["score", basePath, adapterDir, inputs, output]);
        Assert.AreEqual(0, exit, stdout + stderr);
        var reference = TorchSharp.PyBridge.Safetensors.LoadStateDict(output)["logits"];
        double diff = TestData.MaxAbsDiff(expected, reference);
        Console.WriteLine($"ResNet-18 + conv LoRA (merged) vs PyTorch reference (float64): max |difference| {diff:E2}, max |logit| {expected.abs().max().item<float>():F3}");

        // float32 (merged kernels) against float64 through 22 convolutions: ~1e-6 relative on logits of order 1.
        Assert.IsLessThan(1e-4, diff);
        Assert.IsGreaterThan(0.1, expected.abs().max().item<float>(), "logits are not trivially small");
    }
}
