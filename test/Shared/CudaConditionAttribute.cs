using TorchSharp;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Runs a test class or method only where TorchSharp sees a CUDA device; elsewhere MSTest reports it as skipped
/// (outcome NotExecuted in TRX), never as passed or inconclusive. Built on MSTest's <see cref="ConditionBaseAttribute"/>,
/// like its OSCondition and CICondition attributes.
/// </summary>
[AttributeUsage(AttributeTargets.Class | AttributeTargets.Method, AllowMultiple = false, Inherited = false)]
public sealed class CudaConditionAttribute : ConditionBaseAttribute
{
    /// <summary>Skips unless <c>torch.cuda.is_available()</c>.</summary>
    public CudaConditionAttribute()
        : base(ConditionMode.Include)
    {
        IgnoreMessage = "CUDA not available (torch.cuda.is_available() is false): needs an NVIDIA GPU and a CUDA libtorch; see scripts/gpu-check.sh.";
    }

    /// <summary>
    /// Environment variable that, set to 1, runs the CUDA tests with the CPU standing in for the GPU. A dry run of the
    /// tests' own code (shapes, APIs, dtypes) on a machine without CUDA; it says nothing about CUDA itself.
    /// </summary>
    public const string CpuStandInVariable = "LORA_CUDA_TESTS_ON_CPU";

    /// <summary>True when <see cref="CpuStandInVariable"/> is 1.</summary>
    public static bool CpuStandIn => Environment.GetEnvironmentVariable(CpuStandInVariable) == "1";

    /// <summary>The device the CUDA tests run on: cuda:0, or the CPU under <see cref="CpuStandInVariable"/>.</summary>
    public static torch.Device Device => CpuStandIn ? torch.CPU : torch.CUDA;

    /// <inheritdoc />
    public override string GroupName => "Cuda";

    /// <inheritdoc />
    public override bool IsConditionMet => CpuStandIn || IsCudaAvailable();

    /// <summary>True when TorchSharp can use a CUDA device; false (not an exception) when the CUDA backend cannot load.</summary>
    public static bool IsCudaAvailable()
    {
        try
        {
            return torch.cuda.is_available();
        }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or DllNotFoundException or TypeInitializationException)
        {
            return false;
        }
    }
}
