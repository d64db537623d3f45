// Hand-computed checks of the reference matrix-product, quantization and softmax kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "backends/ref/kernels.h"
#include "nibble/graph.h"
#include "nibble/tensor.h"

namespace nibble::ref {
namespace {

Tensor make(DType t, Shape shape, const std::vector<double>& values) {
  Tensor x(t, std::move(shape));
  EXPECT_EQ(x.numel(), static_cast<int64_t>(values.size())) << "test tensor has the wrong number of values";
  for (size_t i = 0; i < values.size(); ++i) x.set(static_cast<int64_t>(i), values[i]);
  return x;
}
Tensor f32(Shape shape, const std::vector<double>& values) {
  return make(DType::f32, std::move(shape), values);
}

Node node(const std::string& op, int opset) {
  Node n;
  n.op_type = op;
  n.opset = opset;
  n.outputs = {"y"};
  return n;
}

// Runs kernel fn on the inputs and returns its single output.
Tensor run(KernelFn fn, const Node& n, const Inputs& in) {
  Outputs out(1);
  fn(n, in, out);
  return out[0];
}

std::vector<double> values(const Tensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<size_t>(i)] = t.get(i);
  return v;
}

void expect_near_all(const Tensor& got, const std::vector<double>& want, double tol = 1e-6) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got.get(static_cast<int64_t>(i)), want[i], tol) << "element " << i;
  }
}

// The message of the KernelError that fn throws, or "" when it throws none.
std::string kernel_error(KernelFn fn, const Node& n, const Inputs& in) {
  try {
    run(fn, n, in);
  } catch (const KernelError& e) {
    return e.what();
  }
  return "";
}

// --- Gemm ------------------------------------------------------------------------------------------

TEST(RefGemm, AllAttributes) {
  // A is stored [K=3, M=2] and B [N=2, K=3]; A' = [[1,3,5],[2,4,6]], B' = [[1,0],[0,1],[1,1]].
  const Tensor a = f32({3, 2}, {1, 2, 3, 4, 5, 6});
  const Tensor b = f32({2, 3}, {1, 0, 1, 0, 1, 1});
  const Tensor c = f32({2, 1}, {10, 20});
  Node n = node("Gemm", 13);
  n.attrs["transA"] = int64_t{1};
  n.attrs["transB"] = int64_t{1};
  n.attrs["alpha"] = 0.5f;
  n.attrs["beta"] = 2.0f;
  // A'B' = [[6, 8], [8, 10]]; 0.5 * that + 2 * [[10], [20]].
  const Tensor y = run(gemm, n, {&a, &b, &c});
  EXPECT_EQ(y.dtype(), DType::f32);
  EXPECT_EQ(y.shape(), (Shape{2, 2}));
  EXPECT_EQ(values(y), (std::vector<double>{23, 24, 44, 45}));
}

TEST(RefGemm, BiasBroadcastForms) {
  const Tensor a = f32({2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor b = f32({3, 2}, {1, 0, 0, 1, 1, 1});  // A * B = [[4, 5], [10, 11]]
  const Node n = node("Gemm", 13);
  EXPECT_EQ(values(run(gemm, n, {&a, &b})), (std::vector<double>{4, 5, 10, 11}));
  const Tensor scalar = f32({}, {100});
  EXPECT_EQ(values(run(gemm, n, {&a, &b, &scalar})), (std::vector<double>{104, 105, 110, 111}));
  const Tensor vec = f32({2}, {100, 200});
  EXPECT_EQ(values(run(gemm, n, {&a, &b, &vec})), (std::vector<double>{104, 205, 110, 211}));
  const Tensor row = f32({1, 2}, {100, 200});
  EXPECT_EQ(values(run(gemm, n, {&a, &b, &row})), (std::vector<double>{104, 205, 110, 211}));
  const Tensor col = f32({2, 1}, {100, 200});
  EXPECT_EQ(values(run(gemm, n, {&a, &b, &col})), (std::vector<double>{104, 105, 210, 211}));
  const Tensor full = f32({2, 2}, {100, 200, 300, 400});
  EXPECT_EQ(values(run(gemm, n, {&a, &b, &full})), (std::vector<double>{104, 205, 310, 411}));
}

TEST(RefGemm, Errors) {
  const Node n = node("Gemm", 13);
  const Tensor a = f32({2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor b = f32({2, 2}, {1, 2, 3, 4});
  EXPECT_NE(kernel_error(gemm, n, {&a, &b}).find("inner dimensions 3 and 2 differ"), std::string::npos);
  // [2, 3] x [3, 4] gives [2, 4]; a C of 3 columns does not broadcast to it.
  const Tensor b2 = f32({3, 4}, std::vector<double>(12, 1));
  const Tensor c = f32({3}, {1, 2, 3});
  EXPECT_NE(kernel_error(gemm, n, {&a, &b2, &c}).find("does not broadcast"), std::string::npos);
  const Tensor a3 = f32({1, 2, 3}, {1, 2, 3, 4, 5, 6});
  EXPECT_NE(kernel_error(gemm, n, {&a3, &b2}), "");
  const Tensor ai = make(DType::s32, {2, 3}, {1, 2, 3, 4, 5, 6});
  EXPECT_NE(kernel_error(gemm, n, {&ai, &b2}), "");
}

// --- MatMul ----------------------------------------------------------------------------------------

TEST(RefMatMul, OneDimensionalPromotion) {
  const Node n = node("MatMul", 13);
  const Tensor v = f32({3}, {1, 2, 3});
  const Tensor m = f32({3, 2}, {1, 2, 3, 4, 5, 6});
  const Tensor y1 = run(matmul, n, {&v, &m});
  EXPECT_EQ(y1.shape(), (Shape{2}));
  EXPECT_EQ(values(y1), (std::vector<double>{22, 28}));

  const Tensor mt = f32({2, 3}, {1, 3, 5, 2, 4, 6});
  const Tensor y2 = run(matmul, n, {&mt, &v});
  EXPECT_EQ(y2.shape(), (Shape{2}));
  EXPECT_EQ(values(y2), (std::vector<double>{22, 28}));

  const Tensor w = f32({3}, {4, 5, 6});
  const Tensor y3 = run(matmul, n, {&v, &w});
  EXPECT_EQ(y3.shape(), (Shape{}));
  EXPECT_EQ(values(y3), (std::vector<double>{32}));
}

TEST(RefMatMul, BatchBroadcast) {
  const Node n = node("MatMul", 13);
  // A: [2, 1, 2, 2] = {I, 2I}; B: [3, 2, 2]. Result [2, 3, 2, 2] with result[a][b] = (a + 1) * B[b].
  const Tensor a = f32({2, 1, 2, 2}, {1, 0, 0, 1, 2, 0, 0, 2});
  const std::vector<double> bv = {1, 2, 3, 4, 0, 1, 1, 0, 1, 1, 1, 1};
  const Tensor b = f32({3, 2, 2}, bv);
  const Tensor y = run(matmul, n, {&a, &b});
  ASSERT_EQ(y.shape(), (Shape{2, 3, 2, 2}));
  std::vector<double> want;
  for (double s : {1.0, 2.0}) {
    for (double e : bv) want.push_back(s * e);
  }
  EXPECT_EQ(values(y), want);

  // A 1-D operand against a batched one: [2] x [2, 2, 3] -> [2, 3].
  const Tensor v = f32({2}, {1, 10});
  const Tensor bb = f32({2, 2, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  const Tensor yv = run(matmul, n, {&v, &bb});
  EXPECT_EQ(yv.shape(), (Shape{2, 3}));
  EXPECT_EQ(values(yv), (std::vector<double>{41, 52, 63, 107, 118, 129}));
}

TEST(RefMatMul, Errors) {
  const Node n = node("MatMul", 13);
  const Tensor a = f32({2, 3}, std::vector<double>(6, 1));
  const Tensor b = f32({4, 5}, std::vector<double>(20, 1));
  EXPECT_EQ(kernel_error(matmul, n, {&a, &b}),
            "MatMul: A is [2, 3] and B is [4, 5]: inner dimensions 3 and 4 differ");
  const Tensor a3 = f32({2, 2, 3}, std::vector<double>(12, 1));
  const Tensor b3 = f32({3, 3, 2}, std::vector<double>(18, 1));
  EXPECT_NE(kernel_error(matmul, n, {&a3, &b3}).find("do not broadcast"), std::string::npos);
  const Tensor s = f32({}, {1});
  EXPECT_NE(kernel_error(matmul, n, {&s, &b}), "");
}

// --- MatMulInteger ---------------------------------------------------------------------------------

TEST(RefMatMulInteger, ZeroPoints) {
  const Node n = node("MatMulInteger", 10);
  const Tensor a = make(DType::u8, {2, 3}, {11, 7, 3, 10, 6, 2});
  const Tensor b = make(DType::u8, {3, 2}, {1, 4, 2, 5, 3, 6});
  const Tensor azp = make(DType::u8, {}, {12});
  const Tensor bzp0 = make(DType::u8, {}, {0});
  const Tensor y = run(matmul_integer, n, {&a, &b, &azp, &bzp0});
  EXPECT_EQ(y.dtype(), DType::s32);
  EXPECT_EQ(y.shape(), (Shape{2, 2}));
  EXPECT_EQ(values(y), (std::vector<double>{-38, -83, -44, -98}));

  // Per-row a_zero_point: row 1 becomes [0, -4, -8].
  const Tensor azp_rows = make(DType::u8, {2}, {12, 10});
  EXPECT_EQ(values(run(matmul_integer, n, {&a, &b, &azp_rows})), (std::vector<double>{-38, -83, -32, -68}));

  // Per-column b_zero_point and no a_zero_point: B' = [[0, 0], [1, 1], [2, 2]].
  const Tensor bzp_cols = make(DType::u8, {2}, {1, 4});
  EXPECT_EQ(values(run(matmul_integer, n, {&a, &b, nullptr, &bzp_cols})),
            (std::vector<double>{13, 13, 10, 10}));

  // N-D per-row zero point [2, 1, 1] on a [2, 1, 2] A.
  const Tensor a3 = make(DType::u8, {2, 1, 2}, {5, 5, 7, 7});
  const Tensor azp3 = make(DType::u8, {2, 1, 1}, {5, 6});
  const Tensor b2 = make(DType::u8, {2, 1}, {1, 2});
  const Tensor y3 = run(matmul_integer, n, {&a3, &b2, &azp3});
  EXPECT_EQ(y3.shape(), (Shape{2, 1, 1}));
  EXPECT_EQ(values(y3), (std::vector<double>{0, 3}));
}

TEST(RefMatMulInteger, SignedExtremes) {
  const Node n = node("MatMulInteger", 10);
  const Tensor a = make(DType::s8, {1, 2}, {-128, 127});
  const Tensor b = make(DType::s8, {2, 1}, {127, -128});
  EXPECT_EQ(values(run(matmul_integer, n, {&a, &b})), (std::vector<double>{-32512}));
  // Mixed signedness: u8 A with s8 B.
  const Tensor au = make(DType::u8, {1, 2}, {255, 255});
  EXPECT_EQ(values(run(matmul_integer, n, {&au, &b})), (std::vector<double>{-255}));
}

TEST(RefMatMulInteger, Errors) {
  const Node n = node("MatMulInteger", 10);
  const Tensor a = make(DType::u8, {2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor b = make(DType::u8, {2, 2}, {1, 2, 3, 4});
  EXPECT_NE(kernel_error(matmul_integer, n, {&a, &b}).find("inner dimensions 3 and 2 differ"),
            std::string::npos);
  const Tensor b3 = make(DType::u8, {3, 2}, {1, 2, 3, 4, 5, 6});
  const Tensor azp_bad = make(DType::u8, {3}, {1, 2, 3});
  EXPECT_NE(kernel_error(matmul_integer, n, {&a, &b3, &azp_bad}).find("a_zero_point"), std::string::npos);
  const Tensor azp_s8 = make(DType::s8, {}, {1});
  EXPECT_NE(kernel_error(matmul_integer, n, {&a, &b3, &azp_s8}).find("a_zero_point"), std::string::npos);
  const Tensor af = f32({2, 3}, {1, 2, 3, 4, 5, 6});
  EXPECT_NE(kernel_error(matmul_integer, n, {&af, &b3}), "");
}

// --- QLinearMatMul ---------------------------------------------------------------------------------

TEST(RefQLinearMatMul, OnnxExample) {
  // The inputs and expected output of ONNX's test_qlinearmatmul_2D.
  const Node n = node("QLinearMatMul", 10);
  const Tensor a = make(DType::u8, {2, 4}, {208, 236, 0, 238, 3, 214, 255, 29});
  const Tensor as = f32({}, {0.0066});
  const Tensor az = make(DType::u8, {}, {113});
  const Tensor b = make(DType::u8, {4, 3}, {152, 51, 244, 60, 26, 255, 0, 127, 246, 127, 254, 247});
  const Tensor bs = f32({}, {0.00705});
  const Tensor bz = make(DType::u8, {}, {114});
  const Tensor ys = f32({}, {0.0107});
  const Tensor yz = make(DType::u8, {}, {118});
  const Tensor y = run(qlinear_matmul, n, {&a, &as, &az, &b, &bs, &bz, &ys, &yz});
  EXPECT_EQ(y.dtype(), DType::u8);
  EXPECT_EQ(values(y), (std::vector<double>{168, 115, 255, 1, 66, 151}));
}

TEST(RefQLinearMatMul, TiesRoundToEvenAndSaturate) {
  const Node n = node("QLinearMatMul", 10);
  const Tensor a = make(DType::s8, {1, 3}, {1, 1, 100});
  const Tensor one = f32({}, {1});
  const Tensor two = f32({}, {2});
  const Tensor z = make(DType::s8, {}, {0});
  // Columns: acc 5 -> 2.5 -> 2; acc 7 -> 3.5 -> 4; acc -5 -> -2.5 -> -2; acc 300 -> 150 -> saturates.
  const Tensor b = make(DType::s8, {3, 4}, {2, 3, -2, 100, 3, 4, -3, 100, 0, 0, 0, 1});
  const Tensor yz = make(DType::s8, {}, {-1});
  const Tensor y = run(qlinear_matmul, n, {&a, &one, &z, &b, &one, &z, &two, &yz});
  EXPECT_EQ(y.dtype(), DType::s8);
  EXPECT_EQ(values(y), (std::vector<double>{1, 3, -3, 127}));
}

TEST(RefQLinearMatMul, Errors) {
  const Node n = node("QLinearMatMul", 10);
  const Tensor a = make(DType::u8, {2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor b = make(DType::u8, {2, 2}, {1, 2, 3, 4});
  const Tensor s = f32({}, {1});
  const Tensor z = make(DType::u8, {}, {0});
  EXPECT_NE(
      kernel_error(qlinear_matmul, n, {&a, &s, &z, &b, &s, &z, &s, &z}).find("inner dimensions 3 and 2"),
      std::string::npos);
  EXPECT_NE(kernel_error(qlinear_matmul, n, {&a, &s, &z, &b}).find("b_scale"), std::string::npos);
}

// --- QuantizeLinear --------------------------------------------------------------------------------

TEST(RefQuantizeLinear, TiesToEvenS8) {
  const Node n = node("QuantizeLinear", 13);
  const Tensor x = f32({6}, {0.5, 1.5, 2.5, -0.5, -1.5, -2.5});
  const Tensor s = f32({}, {1});
  const Tensor z = make(DType::s8, {}, {0});
  const Tensor y = run(quantize_linear, n, {&x, &s, &z});
  EXPECT_EQ(y.dtype(), DType::s8);
  EXPECT_EQ(values(y), (std::vector<double>{0, 2, 2, -0, -2, -2}));
}

TEST(RefQuantizeLinear, TiesToEvenU8WithZeroPoint) {
  const Node n = node("QuantizeLinear", 10);
  const Tensor x = f32({6}, {1, 3, 5, -1, -3, -5});
  const Tensor s = f32({}, {2});
  const Tensor z = make(DType::u8, {}, {128});
  EXPECT_EQ(values(run(quantize_linear, n, {&x, &s, &z})),
            (std::vector<double>{128, 130, 130, 128, 126, 126}));
}

TEST(RefQuantizeLinear, Saturation) {
  const Node n = node("QuantizeLinear", 13);
  const Tensor x = f32({4}, {300, -300, 1e30, -INFINITY});
  const Tensor s = f32({}, {1});
  const Tensor zu = make(DType::u8, {}, {10});
  EXPECT_EQ(values(run(quantize_linear, n, {&x, &s, &zu})), (std::vector<double>{255, 0, 255, 0}));
  const Tensor zs = make(DType::s8, {}, {10});
  EXPECT_EQ(values(run(quantize_linear, n, {&x, &s, &zs})), (std::vector<double>{127, -128, 127, -128}));
  // Without a zero point the output is u8 with zero point 0.
  const Tensor x2 = f32({3}, {-1, 3.5, 254.5});
  const Tensor y = run(quantize_linear, n, {&x2, &s});
  EXPECT_EQ(y.dtype(), DType::u8);
  EXPECT_EQ(values(y), (std::vector<double>{0, 4, 254}));
}

TEST(RefQuantizeLinear, Int32Input) {
  const Node n = node("QuantizeLinear", 13);
  const Tensor x = make(DType::s32, {3}, {5, 7, -1000});
  const Tensor s = f32({}, {2});
  const Tensor z = make(DType::s8, {}, {1});
  EXPECT_EQ(values(run(quantize_linear, n, {&x, &s, &z})), (std::vector<double>{3, 5, -128}));
}

TEST(RefQuantizeLinear, PerAxis) {
  Node n = node("QuantizeLinear", 13);
  // Default axis 1 on [2, 3]: column c uses scale[c] and zero_point[c].
  const Tensor x = f32({2, 3}, {1, 2, 4, 3, 6, 10});
  const Tensor s = f32({3}, {1, 2, 4});
  const Tensor z = make(DType::u8, {3}, {0, 10, 20});
  EXPECT_EQ(values(run(quantize_linear, n, {&x, &s, &z})), (std::vector<double>{1, 11, 21, 3, 13, 22}));

  // Negative axis: -2 on [2, 3] is axis 0, one scale per row.
  n.attrs["axis"] = int64_t{-2};
  const Tensor x2 = f32({2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor s2 = f32({2}, {1, 2});
  EXPECT_EQ(values(run(quantize_linear, n, {&x2, &s2})), (std::vector<double>{1, 2, 3, 2, 2, 3}));

  // Axis 1 of a 4-D tensor: channels hold runs of H*W elements.
  Node n4 = node("QuantizeLinear", 13);
  const Tensor x4 = f32({1, 2, 1, 2}, {10, 20, 10, 20});
  const Tensor s4 = f32({2}, {10, 5});
  EXPECT_EQ(values(run(quantize_linear, n4, {&x4, &s4})), (std::vector<double>{1, 2, 2, 4}));
}

TEST(RefQuantizeLinear, Errors) {
  const Tensor x = f32({2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor s3 = f32({3}, {1, 2, 4});
  // Per-axis scales arrived in opset 13.
  EXPECT_NE(kernel_error(quantize_linear, node("QuantizeLinear", 10), {&x, &s3}).find("opset 13"),
            std::string::npos);
  const Tensor s2 = f32({2}, {1, 2});
  EXPECT_NE(kernel_error(quantize_linear, node("QuantizeLinear", 13), {&x, &s2}).find("y_scale"),
            std::string::npos);
  const Tensor s = f32({}, {1});
  const Tensor zp_bad = make(DType::s32, {}, {0});
  EXPECT_NE(kernel_error(quantize_linear, node("QuantizeLinear", 13), {&x, &s, &zp_bad}), "");
  const Tensor zp3 = make(DType::u8, {2}, {0, 0});
  EXPECT_NE(kernel_error(quantize_linear, node("QuantizeLinear", 13), {&x, &s3, &zp3}).find("same shape"),
            std::string::npos);
}

// --- DequantizeLinear ------------------------------------------------------------------------------

TEST(RefDequantizeLinear, PerTensor) {
  const Node n = node("DequantizeLinear", 13);
  const Tensor x = make(DType::u8, {4}, {0, 3, 128, 255});
  const Tensor s = f32({}, {2});
  const Tensor z = make(DType::u8, {}, {128});
  const Tensor y = run(dequantize_linear, n, {&x, &s, &z});
  EXPECT_EQ(y.dtype(), DType::f32);
  EXPECT_EQ(values(y), (std::vector<double>{-256, -250, 0, 254}));
  const Tensor xi = make(DType::s32, {2}, {1000000, -7});
  const Tensor h = f32({}, {0.5});
  EXPECT_EQ(values(run(dequantize_linear, n, {&xi, &h})), (std::vector<double>{500000, -3.5}));
}

TEST(RefDequantizeLinear, PerAxisS8) {
  Node n = node("DequantizeLinear", 13);
  n.attrs["axis"] = int64_t{0};
  const Tensor x = make(DType::s8, {2, 2}, {-128, 127, 1, -1});
  const Tensor s = f32({2}, {0.5, 3});
  const Tensor z = make(DType::s8, {2}, {0, 1});
  EXPECT_EQ(values(run(dequantize_linear, n, {&x, &s, &z})), (std::vector<double>{-64, 63.5, 0, -6}));
  const Tensor zu = make(DType::u8, {2}, {0, 1});
  EXPECT_NE(kernel_error(dequantize_linear, n, {&x, &s, &zu}).find("x_zero_point"), std::string::npos);
}

TEST(RefDequantizeLinear, E4m3CodesTimesTheScale) {
  // Opset 19: float8e4m3fn codes. 0x38 = 1, 0xB8 = -1, 0x7E = 448, 0x01 = 2^-9, 0x3A = 1.25.
  Node n = node("DequantizeLinear", 19);
  n.attrs["axis"] = int64_t{1};
  Tensor codes(DType::e4m3, {1, 2, 1, 3});
  const uint8_t bits[6] = {0x38, 0xB8, 0x7E, 0x01, 0x3A, 0x00};
  std::copy(bits, bits + 6, codes.bytes());
  const Tensor s = f32({2}, {0.5, 4});
  EXPECT_EQ(values(run(dequantize_linear, n, {&codes, &s})), (std::vector<double>{0.5, -0.5, 224, 4.0 / 512, 5, 0}));
  Tensor z(DType::e4m3, {2});
  EXPECT_EQ(values(run(dequantize_linear, n, {&codes, &s, &z})).size(), 6u);
  z.bytes()[1] = 0x38;
  EXPECT_NE(kernel_error(dequantize_linear, n, {&codes, &s, &z}).find("zero"), std::string::npos);
}

// --- nibble:Scale ----------------------------------------------------------------------------------

TEST(RefScale, DividesEachChannelOfLogitsOrMaps) {
  const Node n = node("nibble:Scale", 1);
  const Tensor s = f32({2}, {0.5, 4});
  const Tensor logits = make(DType::s32, {2, 2}, {3, -8, 1, 6});
  EXPECT_EQ(values(run(scale, n, {&logits, &s})), (std::vector<double>{6, -2, 2, 1.5}));
  // N x K x H x W: the scale of channel k divides its whole map.
  const Tensor maps = make(DType::s32, {2, 2, 1, 3}, {1, 2, 3, 4, 8, -12, -1, 0, 5, 16, 20, 24});
  EXPECT_EQ(values(run(scale, n, {&maps, &s})), (std::vector<double>{2, 4, 6, 1, 2, -3, -2, 0, 10, 4, 5, 6}));
  const Tensor flat = make(DType::s32, {4}, {1, 2, 3, 4});
  EXPECT_NE(kernel_error(scale, n, {&flat, &s}).find("N x K"), std::string::npos);
  const Tensor three = make(DType::s32, {1, 3, 1, 1}, {1, 2, 3});
  EXPECT_NE(kernel_error(scale, n, {&three, &s}).find("3 f32 scales"), std::string::npos);
}

// --- Softmax ---------------------------------------------------------------------------------------

TEST(RefSoftmax, AxisSemanticsChangeAtOpset13) {
  // exp(x) = 1, 2, 3, 4 laid out as [1, 2, 2].
  const Tensor x = f32({1, 2, 2}, {0, std::log(2.0), std::log(3.0), std::log(4.0)});
  // Opset 11, default axis 1: coerced to [1, 4], one softmax over all four.
  expect_near_all(run(softmax, node("Softmax", 11), {&x}), {0.1, 0.2, 0.3, 0.4});
  // Opset 13, default axis -1: one softmax per row.
  expect_near_all(run(softmax, node("Softmax", 13), {&x}), {1.0 / 3, 2.0 / 3, 3.0 / 7, 4.0 / 7});
  // Opset 13, axis 1: along the middle dimension, pairs (1, 3) and (2, 4).
  Node n13 = node("Softmax", 13);
  n13.attrs["axis"] = int64_t{1};
  expect_near_all(run(softmax, n13, {&x}), {0.25, 1.0 / 3, 0.75, 2.0 / 3});
  // Opset 11, axis -1 (= 2): the trailing part is one dimension, so it matches opset 13's default.
  Node n11 = node("Softmax", 11);
  n11.attrs["axis"] = int64_t{-1};
  expect_near_all(run(softmax, n11, {&x}), {1.0 / 3, 2.0 / 3, 3.0 / 7, 4.0 / 7});
  // Opset 11, axis 0: everything in one softmax as well.
  n11.attrs["axis"] = int64_t{0};
  expect_near_all(run(softmax, n11, {&x}), {0.1, 0.2, 0.3, 0.4});
}

TEST(RefSoftmax, LargeInputsAreStable) {
  const Tensor x = f32({2}, {1000, 1001});
  const double e = std::exp(1.0);
  expect_near_all(run(softmax, node("Softmax", 13), {&x}), {1 / (1 + e), e / (1 + e)});
  const Tensor y = run(softmax, node("Softmax", 13), {&x});
  EXPECT_FALSE(std::isnan(y.get(0)));
}

TEST(RefSoftmax, Errors) {
  Node n = node("Softmax", 13);
  n.attrs["axis"] = int64_t{3};
  const Tensor x = f32({1, 2, 2}, {0, 0, 0, 0});
  EXPECT_NE(kernel_error(softmax, n, {&x}).find("axis 3"), std::string::npos);
  const Tensor xi = make(DType::s32, {2}, {0, 0});
  EXPECT_NE(kernel_error(softmax, node("Softmax", 13), {&xi}), "");
}

TEST(RefQuantizeFloat, RoundsHalfToEvenAndClampsToTheSeedRanges) {
  Node n = node("nibble:QuantizeFloat", 1);
  n.attrs["bits"] = int64_t{4};
  n.attrs["signed"] = int64_t{0};
  const Tensor x = f32({1, 7}, {-3.0, 0.25, 0.75, 1.25, 2.5, 7.4, 100.0});
  const Tensor s = f32({1}, {0.5});
  const Tensor y = run(quantize_float, n, {&x, &s});
  EXPECT_EQ(y.dtype(), DType::u8);
  // x / 0.5 = -6, 0.5, 1.5, 2.5, 5, 14.8, 200 -> half to even, clamped to [0, 15].
  EXPECT_EQ(values(y), (std::vector<double>{0, 0, 2, 2, 5, 15, 15}));
  // Signed 7 bits: [-127, 127] in s8, per-channel scales along axis 1.
  n.attrs["bits"] = int64_t{7};
  n.attrs["signed"] = int64_t{1};
  const Tensor xc = f32({1, 2, 2}, {-1000.0, 1.0, 3.0, -3.0});
  const Tensor sc = f32({2}, {1.0, 2.0});
  const Tensor yc = run(quantize_float, n, {&xc, &sc});
  EXPECT_EQ(yc.dtype(), DType::s8);
  EXPECT_EQ(values(yc), (std::vector<double>{-127, 1, 2, -2}));
  const Tensor bad = f32({1}, {0.0});
  EXPECT_NE(kernel_error(quantize_float, n, {&x, &bad}).find("not a positive finite number"), std::string::npos);
}

TEST(RefFp8Conv, SumsExactlyThenScalesOnceAndQuantizeFloatMakesE4m3) {
  // x: 1 x 2 x 3 x 3 of e4m3 values, w: 2 x 2 x 2 x 2 of s4, stride 1, pad 0.
  Tensor x(DType::e4m3, {1, 2, 3, 3});
  const std::vector<double> xv = {0.5, -1.25, 448, 3.0, 0.001953125, -0.75, 2.5, 1.0, -448,
                                  0.125, 6.0, -2.0, 0.375, 1.75, -0.5, 4.0, -8.0, 0.25};
  for (size_t i = 0; i < xv.size(); ++i) x.set(static_cast<int64_t>(i), xv[i]);
  for (size_t i = 0; i < xv.size(); ++i) ASSERT_EQ(x.get(static_cast<int64_t>(i)), xv[i]) << "not an e4m3 value";
  const Tensor w = make(DType::s4, {2, 2, 2, 2}, {7, -7, 3, 1, -2, 0, 5, -1, 1, 2, 3, 4, -5, -6, -7, 6});
  const Tensor b = f32({2}, {0.5, -1.0});
  const Tensor sc = f32({2}, {0.01, 0.002});
  Node n = node("nibble:Fp8Conv", 1);
  n.attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
  const Tensor y = run(fp8_conv, n, {&x, &w, &b, &sc});
  ASSERT_EQ(y.shape(), (Shape{1, 2, 2, 2}));
  for (int64_t m = 0; m < 2; ++m) {
    for (int64_t oy = 0; oy < 2; ++oy) {
      for (int64_t ox = 0; ox < 2; ++ox) {
        double sum = 0;  // exact: every term is a multiple of 2^-9 well inside double's range
        for (int64_t c = 0; c < 2; ++c) {
          for (int64_t r = 0; r < 2; ++r) {
            for (int64_t s = 0; s < 2; ++s) sum += xv[(c * 3 + oy + r) * 3 + ox + s] * w.get(((m * 2 + c) * 2 + r) * 2 + s);
          }
        }
        const float want = static_cast<float>(sum) * sc.data<float>()[m] + b.data<float>()[m];
        EXPECT_EQ(y.get((m * 2 + oy) * 2 + ox), want) << m << " " << oy << " " << ox;
      }
    }
  }
  n.attrs["relu"] = int64_t{1};
  const Tensor yr = run(fp8_conv, n, {&x, &w, &b, &sc});
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_EQ(yr.get(i), std::max(0.0, y.get(i)));
  // f32 -> e4m3: nearest even on the e4m3 grid, saturating at 448.
  Node q = node("nibble:QuantizeFloat", 1);
  q.attrs["e4m3"] = int64_t{1};
  const Tensor xf = f32({5}, {1.0, 1.0625, 1.1875, 1000.0, -0.0009765625});
  const Tensor s1 = f32({1}, {0.5});
  const Tensor yq = run(quantize_float, q, {&xf, &s1});
  EXPECT_EQ(yq.dtype(), DType::e4m3);
  // 2, 2.125 -> 2 (tie to even), 2.375 -> 2.5, 2000 -> 448, -2^-10 -> -2^-9 (tie to the even subnormal 1 x 2^-9? no: 2^-10 / 2^-9 = 0.5 -> 0)
  EXPECT_EQ(values(yq), (std::vector<double>{2.0, 2.0, 2.5, 448.0, -0.001953125}));
}

}  // namespace
}  // namespace nibble::ref
